"""Adds the stage description to a checkpoint written before checkpoints described themselves.

    python experiments/upgrade_checkpoint.py --checkpoint=OLD --out=NEW [--overwrite] \\
        (--settings=OLD_STAGE/inference.json | --stage=duplex_3 --speech_tokenizer=FILE \\
         [--context_chunks=N] [--set=flatten.FIELD=VALUE ...])

What is copied and what is added: `omniflatten_jax.checkpoint.format_upgrade`.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config.stages import STAGES

    flags.DEFINE_string("checkpoint", None, "the old checkpoint (folder or step)", required=True)
    flags.DEFINE_string("out", None, "a new checkpoints folder to write", required=True)
    flags.DEFINE_string("settings", None, "the old stage's inference.json")
    flags.DEFINE_enum("stage", None, STAGES, "the stage that trained it")
    flags.DEFINE_string("speech_tokenizer", None, "the tokenizer file the stage trained with")
    flags.DEFINE_integer("context_chunks", None, "duplex: the training window")
    flags.DEFINE_multi_string("set", [], "flatten settings, e.g. --set=flatten.text_chunk=8")
    flags.DEFINE_bool("overwrite", False, "replace a non-empty --out (never a training run's "
                      "checkpoints nor the checkpoint being read)")


def main() -> None:
    import json

    from omniflatten_jax.checkpoint.format_upgrade import upgrade
    from omniflatten_jax.config import FlattenConfig, from_dict, override

    settings = {}
    if FLAGS.settings:
        with open(FLAGS.settings) as f:
            settings = json.load(f)
    flatten = from_dict(FlattenConfig, settings.get("flatten", {}))
    for assignment in FLAGS.set:
        if not assignment.startswith("flatten."):
            raise ValueError(f"--set takes flatten.FIELD=VALUE, not {assignment!r}")
        flatten = override(flatten, assignment[len("flatten."):])
    stage = FLAGS.stage or settings.get("stage")
    tokenizer = FLAGS.speech_tokenizer or settings.get("speech_tokenizer")
    if not stage or not tokenizer:
        raise ValueError("give --stage and --speech_tokenizer (or --settings)")
    step_dir = upgrade(FLAGS.checkpoint, FLAGS.out, stage=stage, flatten=flatten,
                       speech_tokenizer=tokenizer,
                       context_chunks=FLAGS.context_chunks or settings.get("context_chunks"),
                       overwrite=FLAGS.overwrite)
    print(f"wrote {step_dir}: {stage}, speech tokenizer stored ({os.path.basename(tokenizer)})")


if __name__ == "__main__":
    cli.run(main, define_flags)
