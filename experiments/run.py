"""The one entry point: ``python experiments/run.py --stage=STAGE [--config=NAME] ...``.

Stages: ``alignment`` (ASR + TTS on speech-text pairs) and ``smoke`` (a one-minute check of
the library core). The dialogue curriculum (half_duplex, duplex_4, duplex_3, duplex_2, all)
is the next issue; asking for it now says so. Rerunning a command resumes from the stage's
latest checkpoint, or reports the stage complete.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLANNED = ("half_duplex", "duplex_4", "duplex_3", "duplex_2", "all")

flags.DEFINE_enum("stage", "alignment", ("alignment", "smoke") + PLANNED, "what to run")
flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
flags.DEFINE_string("workdir", "./workdir", "where data, checkpoints and metrics go")
flags.DEFINE_string("data", None, "embedded | librispeech:DIR | manifest:FILE.jsonl")
flags.DEFINE_integer("steps", None, "training steps (overrides the configuration)")
flags.DEFINE_string("init_from", None, "a checkpoint to start from (e.g. from export.from_hf)")
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
    from omniflatten_jax.config import override

    cfg = get_config(FLAGS.config)
    if FLAGS.data:
        cfg = override(cfg, f"data.source={FLAGS.data}")
    if FLAGS.steps is not None:
        cfg = override(cfg, f"train.steps={FLAGS.steps}")
    for assignment in FLAGS.set:
        cfg = override(cfg, assignment)
    return cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    if FLAGS.stage in PLANNED:
        raise app.UsageError(f"stage {FLAGS.stage!r} is not built yet (the dialogue curriculum "
                             "is the next issue); run --stage=alignment")
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()
    start = time.perf_counter()
    if FLAGS.stage == "smoke":
        from experiments import smoke

        smoke.run(FLAGS.workdir, FLAGS.steps or 60)
    else:
        from experiments import alignment_stage

        alignment_stage.run(build_config(), FLAGS.workdir, FLAGS.init_from)
    logging.getLogger(__name__).info("done in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    app.run(main)
