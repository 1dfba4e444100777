"""Writes the workdir's held-out dialogues as Full-Duplex-Bench v1 sample folders.

    python experiments/fdb_samples.py --workdir=DIR --out=DIR [--config --data --set]
        [--per_task=N]

The test split of the workdir's dialogue dataset (built if it is not there yet), cut into FDB's
four tasks (`data_pipelines.fdb_samples`); ``experiments/fdb.py`` streams and scores them.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_experiment_flags()
    flags.DEFINE_string("out", None, "where to write the sample folders", required=True)
    flags.DEFINE_integer("per_task", 0, "at most this many samples per task (0 = all)")


def main() -> None:
    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.fdb_samples import write_samples
    from data_pipelines.prepare import prepare_dialogues
    from omniflatten_jax.speech import load_speech_tokenizer
    from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

    cli.start()
    cfg = cli.build_config()
    prepared = prepare_dialogues(cfg, FLAGS.workdir)
    tokenizer = load_speech_tokenizer(prepared.tokenizer_path)
    source = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)
    records = [source[i] for i in range(len(source))]
    counts = write_samples(records, FLAGS.out, tokenizer.sample_rate, tokenizer.frame_rate,
                           text_tokenizer(cfg.layout).decode, FLAGS.per_task,
                           resynthesis=(tokenizer, cfg.layout))
    print(f"wrote {counts} samples under {FLAGS.out} (from {len(records)} held-out dialogues)")


if __name__ == "__main__":
    cli.run(main, define_flags, traceback_folder=cli.workdir_logs)
