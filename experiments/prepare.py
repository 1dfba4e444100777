"""Prepares a stage's data in the workdir, once: speech tokenizer, token layout, TFDS dataset.

    python experiments/prepare.py --workdir=DIR [--config=NAME --data=... --set=...]
        [--stage=alignment|dialogue|all] [--runner=direct|auto|local|dataflow|flink|spark]
        [-- BEAM PIPELINE OPTIONS]

The step a launcher runs before training, on one machine (`data_pipelines.prepare` says what is
cached, how it is keyed, and how a pod shares it); `run.py` runs it too when the data is not
there yet.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from data_pipelines.runners import RUNNERS

    cli.define_experiment_flags()
    flags.DEFINE_enum("stage", "all", ("alignment", "dialogue", "all"),
                      "which datasets: the alignment stage's, the dialogue stages', or both")
    flags.DEFINE_enum("runner", "direct", RUNNERS,
                      "where to build: local (this process), direct (Apache Beam's DirectRunner: "
                      "a worker process per core), a cluster runner (dataflow, flink, spark), or "
                      "auto (local for small corpora, else direct: what run.py does); Beam "
                      "pipeline options follow a --, e.g. -- --direct_num_workers=8")


def main(beam_args: list[str]) -> None:
    import logging

    from data_pipelines.prepare import prepare_dialogues, prepare_speech_text
    from data_pipelines.runners import Runner

    if beam_args and FLAGS.runner in ("local", "auto"):
        raise ValueError(f"unexpected arguments: {beam_args} (Beam pipeline options, after --, "
                         "need a Beam runner: --runner=direct, dataflow, flink or spark)")
    runner = Runner(FLAGS.runner, tuple(beam_args))
    cli.start()
    cfg = cli.build_config()
    steps = (("alignment", prepare_speech_text), ("dialogue", prepare_dialogues))
    for name, prepare in [(s, f) for s, f in steps if FLAGS.stage in (s, "all")]:
        prepared = prepare(cfg, FLAGS.workdir, runner)
        logging.getLogger(__name__).info(
            "%s dataset %s in %s (fingerprint %s)", name, prepared.config_name,
            prepared.data_dir, prepared.fingerprint[:12])


if __name__ == "__main__":
    cli.run(main, define_flags, traceback_folder=cli.workdir_logs,
            passes_on="Beam pipeline options")
