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
from absl import logging as absl_logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omniflatten_jax import stages  # noqa: E402  (after the path: run as a script)

STAGES = stages.STAGES + ("all", "smoke")

flags.DEFINE_enum("stage", "alignment", STAGES, "what to run")
flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
flags.DEFINE_string("workdir", "./workdir", "where data, checkpoints and metrics go")
flags.DEFINE_string("data", None, "embedded | librispeech:DIR | manifest:FILE.jsonl")
flags.DEFINE_integer("steps", None, "training steps (overrides the configuration)")
flags.DEFINE_string("init_from", None, "a checkpoint to start from (e.g. from export.from_hf); "
                    "a dialogue stage defaults to the previous stage's final checkpoint")
flags.DEFINE_enum("curriculum", None, ("v1", "v2"), "v1: alignment, half_duplex, duplex_4, "
                  "duplex_3, duplex_2; v2 (the paper's v2) skips duplex_4")
flags.DEFINE_multi_string("set", [], "configuration overrides, e.g. --set=train.batch_size=16")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (every host of "
                  "a TPU pod or SLURM job runs the same command; addresses are auto-detected)")
FLAGS = flags.FLAGS


def setup_logging() -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/TFDS per-file INFO lines
    for name in ("omniflatten_jax", "data_pipelines", "experiments", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def build_config():
    from experiments.configs import get_config
    overrides = []
    if FLAGS.data:
        overrides.append(f"data.source={FLAGS.data}")
    if FLAGS.curriculum:
        overrides.append(f"curriculum={FLAGS.curriculum}")
    if FLAGS.steps is not None:
        if FLAGS.stage == "all":
            raise app.UsageError("--steps is per stage; with --stage=all use "
                                 "--set=train.steps=N --set=dialogue_train.steps=M")
        overrides.append(f"{stages.train_section(FLAGS.stage)}.steps={FLAGS.steps}")
    return get_config(FLAGS.config, overrides + list(FLAGS.set))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()
    start = time.perf_counter()
    if FLAGS.stage == "smoke":
        from experiments import smoke

        smoke.run(FLAGS.workdir, FLAGS.steps or 60)
    else:
        run_stages(build_config())
    logging.getLogger(__name__).info("done in %.0f s", time.perf_counter() - start)


def run_stages(cfg) -> None:
    from experiments import alignment_stage, dialogue_stage
    from omniflatten_jax.checkpoint import CheckpointMismatchError
    from omniflatten_jax.vocab import LayoutMismatchError
    try:
        plans = (stages.plan_curriculum(cfg) if FLAGS.stage == "all"
                 else (stages.plan_stage(cfg, FLAGS.stage),))
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    log = logging.getLogger(__name__)
    for plan in plans:
        start = time.perf_counter()
        # --init_from applies to the first stage run; later ones take their predecessor's.
        init_from = FLAGS.init_from if plan is plans[0] else None
        runner = dialogue_stage if plan.is_dialogue else alignment_stage
        try:
            runner.run(cfg, plan, FLAGS.workdir, init_from)
        except dialogue_stage.MissingPredecessor as e:
            raise app.UsageError(str(e)) from None
        except (CheckpointMismatchError, LayoutMismatchError) as e:
            sys.exit(f"error: {plan.name}: {e}")
        log.info("%s finished in %.0f s", plan.name, time.perf_counter() - start)


if __name__ == "__main__":
    app.run(main)
