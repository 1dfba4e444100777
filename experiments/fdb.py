"""The Full-Duplex-Bench v1 harness, offline: streams every sample through a duplex stage and
scores it by FDB's rules.

    python experiments/fdb.py --checkpoint=CKPT --root=DIR [--task=T ...]
        [--words=pocketsphinx|output.json] [--scored_only] [--decoding=FIELD=VALUE ...]

`DIR` holds FDB task folders (FDB's own release, or what ``experiments/fdb_samples.py``
writes); `evaluation.fdb` says what is streamed, scored, resumed and written (``DIR/fdb.json``
and a table beside FDB's published rows).
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.evaluation.fdb_folders import TASKS
    from omniflatten_jax.evaluation.fdb_score import WORD_SOURCES

    flags.DEFINE_string("checkpoint", None, "a duplex stage's checkpoint (omit with "
                        "--scored_only)")
    flags.DEFINE_string("root", None, "FDB sample folders (task folders, or one task folder)",
                        required=True)
    flags.DEFINE_multi_enum("task", [], TASKS, "only these tasks (repeatable; default: all)")
    flags.DEFINE_enum("words", "pocketsphinx", WORD_SOURCES, "word times: PocketSphinx "
                      "(offline), or each sample's output.json as an external recogniser "
                      "wrote it")
    flags.DEFINE_bool("scored_only", False, "score the output.wav files already there (no "
                      "decoding)")
    cli.define_policy_flags()


def main() -> None:
    import json
    import logging
    import time

    from omniflatten_jax.evaluation import fdb
    from omniflatten_jax.evaluation.fdb_folders import REFERENCE_ROWS, TASKS
    from omniflatten_jax.evaluation.fdb_score import format_table, not_scored, table_row
    from omniflatten_jax.inference.duplex import load_duplex

    log = fdb.log
    log.addHandler(logging.StreamHandler())  # our progress only, not every library's INFO
    log.setLevel(logging.INFO)
    log.propagate = False
    tasks = tuple(FLAGS.task or TASKS)
    # Every folder, annotation and input header is checked before the model loads.
    task_dirs = [task_dir for task_dir, _ in fdb.check_root(FLAGS.root, tasks)]
    if not FLAGS.scored_only:
        if not FLAGS.checkpoint:
            raise ValueError("--checkpoint is needed to decode (or give --scored_only)")
        model = load_duplex(FLAGS.checkpoint)
        model = model.with_policy(cli.policy_from_flags(model.settings.policy))
        log.info("decoding %s with %s", model.where, model.settings.policy.describe())
        source = fdb.output_source(model)
        for task_dir in task_dirs:
            fdb.stream_samples(fdb.streamer(model), task_dir, source)
    start = time.perf_counter()
    result = fdb.score_root(FLAGS.root, tasks, FLAGS.words)
    log.info("scored in %.0f s (words: %s; segments: Silero VAD)", time.perf_counter() - start,
             FLAGS.words)
    with open(os.path.join(FLAGS.root, fdb.OUT_FILE), "w") as f:
        json.dump(result, f, indent=1)
    rows = {"ours": table_row(result["model"])}
    rows |= {row: table_row(result[row]) for row in REFERENCE_ROWS if result[row]}
    print(format_table(rows, not_scored(result["model"])))
    print(f"wrote {os.path.join(FLAGS.root, fdb.OUT_FILE)}; {result['not_scored']}: not scored")


if __name__ == "__main__":
    cli.run(main, define_flags)
