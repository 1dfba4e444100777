"""The one entry point: ``python experiments/run.py --stage=STAGE``.

Stages land one issue at a time. Today: ``smoke``, a short end-to-end run of the library core
(see experiments/smoke.py). The alignment stage and the dialogue curriculum (half_duplex,
duplex_4, duplex_3, duplex_2, all) come next; asking for them now says so.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLANNED = ("alignment", "half_duplex", "duplex_4", "duplex_3", "duplex_2", "all")

flags.DEFINE_enum("stage", "smoke", ("smoke",) + PLANNED, "what to run")
flags.DEFINE_string("workdir", "./workdir", "where data, checkpoints and metrics go")
flags.DEFINE_integer("steps", 60, "training steps")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-file INFO lines out of the log
    if FLAGS.stage in PLANNED:
        raise app.UsageError(f"stage {FLAGS.stage!r} is not built yet; run --stage=smoke")
    from experiments import smoke

    smoke.run(FLAGS.workdir, FLAGS.steps)


if __name__ == "__main__":
    app.run(main)
