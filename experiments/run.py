"""The one entry point: ``python experiments/run.py --stage=STAGE [--config=NAME] ...``.

Stages: ``alignment`` (ASR + TTS on speech-text pairs), then the dialogue curriculum
``half_duplex``, ``duplex_4``, ``duplex_3``, ``duplex_2`` (each from the previous stage's final
checkpoint), or ``all`` of them in order; ``smoke`` is a one-minute check of the library core.
Rerunning a command resumes from the stage's latest checkpoint, or reports the stage complete.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)
from omniflatten_jax import stage_plan  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("stage", "alignment", stage_plan.STAGES + ("all", "smoke"), "what to run")
    flags.DEFINE_integer("steps", None, "training steps (overrides the configuration)")
    flags.DEFINE_string("init_from", None, "a checkpoint to start from (e.g. from "
                        "experiments/from_hf.py); a dialogue stage defaults to the previous "
                        "stage's final checkpoint")
    cli.define_experiment_flags()


def build_config():
    overrides = []
    if FLAGS.steps is not None:
        if FLAGS.stage == "all":
            raise ValueError("--steps is per stage; with --stage=all use "
                             "--set=train.steps=N --set=dialogue_train.steps=M")
        overrides.append(f"{stage_plan.train_section(FLAGS.stage)}.steps={FLAGS.steps}")
    return cli.build_config(overrides)


class StageFailed(ValueError):
    """An expected error of one stage, its message prefixed with the stage's name."""


def main() -> None:
    cli.start()
    start = time.perf_counter()
    if FLAGS.stage == "smoke":
        from experiments import smoke

        cfg = cli.build_config([])  # its model and layout: the tiny preset unless --set says
        smoke.run(FLAGS.workdir, FLAGS.steps or 60, cfg.model, cfg.layout)
    else:
        run_stages(build_config())
    logging.getLogger(__name__).info("done in %.0f s", time.perf_counter() - start)


def check_init_from(cfg, path: str) -> None:
    """`--init_from` exists, is readable and holds this run's architecture and token layout
    (the runner checks it again, with the stage's description, when it loads the weights)."""
    from omniflatten_jax import checkpoint

    meta = checkpoint.load_meta(path)
    checkpoint.check_architecture(meta.model, cfg.model, path)
    cfg.layout.check_matches(meta.layout, ours="this run", theirs=f"checkpoint {path}")


def run_stages(cfg) -> None:
    from experiments import alignment_stage, dialogue_stage
    from omniflatten_jax.distributed import locks, paths
    from omniflatten_jax.training.preemption import EXIT_CODE, Preempted
    plans = (stage_plan.plan_curriculum(cfg) if FLAGS.stage == "all"
             else (stage_plan.plan_stage(cfg, FLAGS.stage),))
    log = logging.getLogger(__name__)
    for plan in plans:
        start = time.perf_counter()
        # --init_from applies to the first stage run; later ones take their predecessor's.
        init_from = FLAGS.init_from if plan is plans[0] else None
        runner = dialogue_stage if plan.is_dialogue else alignment_stage
        try:
            with locks.hold(paths.join(FLAGS.workdir, plan.name)):
                if init_from:  # said before preparing data, not after
                    check_init_from(cfg, init_from)
                runner.run(cfg, plan, FLAGS.workdir, init_from)
        except dialogue_stage.MissingPredecessor:
            raise  # says which stage to run first: no stage prefix
        except cli.EXPECTED as e:
            message = cli.one_line(e)
            raise StageFailed(message if message.startswith(f"{plan.name}:")
                              else f"{plan.name}: {message}") from e
        except Preempted as e:
            log.warning("%s", e)
            sys.exit(EXIT_CODE)
        log.info("%s finished in %.0f s", plan.name, time.perf_counter() - start)


if __name__ == "__main__":
    cli.run(main, define_flags, traceback_folder=cli.workdir_logs)
