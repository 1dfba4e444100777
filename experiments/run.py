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

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402
from omniflatten_jax import stage_plan  # noqa: E402  (after the path: run as a script)

STAGES = stage_plan.STAGES + ("all", "smoke")

flags.DEFINE_enum("stage", "alignment", STAGES, "what to run")
flags.DEFINE_integer("steps", None, "training steps (overrides the configuration)")
flags.DEFINE_string("init_from", None, "a checkpoint to start from (e.g. from export.from_hf); "
                    "a dialogue stage defaults to the previous stage's final checkpoint")
cli.define_flags()
FLAGS = flags.FLAGS


def build_config():
    overrides = []
    if FLAGS.steps is not None:
        if FLAGS.stage == "all":
            raise app.UsageError("--steps is per stage; with --stage=all use "
                                 "--set=train.steps=N --set=dialogue_train.steps=M")
        overrides.append(f"{stage_plan.train_section(FLAGS.stage)}.steps={FLAGS.steps}")
    return cli.build_config(overrides)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the input and the fix: reported in one line."""
    from data_pipelines.corpus import BadInputError, InputFileError
    from omniflatten_jax.checkpoint import CheckpointMismatchError, CorruptCheckpointError
    from omniflatten_jax.checkpoint.checkpointer import CheckpointSaveError
    from omniflatten_jax.config import ConfigError
    from omniflatten_jax.config.token_layout import LayoutMismatchError
    from omniflatten_jax.distributed.hosts import HostMismatchError
    from omniflatten_jax.distributed.locks import WorkdirLockedError
    from omniflatten_jax.evaluation.operating_curve import MuteModelError
    from omniflatten_jax.finite import NonFiniteError

    return (CheckpointMismatchError, CorruptCheckpointError, NonFiniteError, HostMismatchError,
            LayoutMismatchError, WorkdirLockedError, CheckpointSaveError, BadInputError,
            InputFileError, FileNotFoundError, PermissionError, ConfigError, MuteModelError,
            StageFailed)


class StageFailed(RuntimeError):
    """An expected error of one stage, its message prefixed with the stage's name."""


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.start()
    start = time.perf_counter()
    with cli.errors_in_one_line(expected_errors()):
        if FLAGS.stage == "smoke":
            from experiments import smoke

            smoke.run(FLAGS.workdir, FLAGS.steps or 60)
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
    from omniflatten_jax.command_errors import one_line
    from omniflatten_jax.distributed import locks, paths
    from omniflatten_jax.training.preemption import EXIT_CODE, Preempted
    try:
        plans = (stage_plan.plan_curriculum(cfg) if FLAGS.stage == "all"
                 else (stage_plan.plan_stage(cfg, FLAGS.stage),))
    except ValueError as e:
        raise app.UsageError(str(e)) from None
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
        except dialogue_stage.MissingPredecessor as e:
            raise app.UsageError(str(e)) from None
        except expected_errors() as e:
            message = one_line(e)
            raise StageFailed(message if message.startswith(f"{plan.name}:")
                              else f"{plan.name}: {message}") from e
        except Preempted as e:
            log.warning("%s", e)
            sys.exit(EXIT_CODE)
        log.info("%s finished in %.0f s", plan.name, time.perf_counter() - start)


if __name__ == "__main__":
    app.run(main)
