"""Exports a checkpoint as a Hugging Face folder of its family (Qwen2, Qwen3) that transformers
loads as is.

    python experiments/to_hf.py --checkpoint=workdir/alignment/checkpoints --out=hf/
        [--dtype=bfloat16] [--overwrite]

What is written, and what is refused: `omniflatten_jax.export.to_hf`.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "a checkpoints folder (latest step) or one step "
                        "folder inside it", required=True)
    flags.DEFINE_string("out", None, "the Hugging Face folder to write", required=True)
    flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "weights' dtype")
    flags.DEFINE_bool("overwrite", False, "replace --out if it exists and is not empty")


def main() -> None:
    from omniflatten_jax import checkpoint
    from omniflatten_jax.export.to_hf import export_hf

    out = export_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype, FLAGS.overwrite)
    directory, step = checkpoint.resolve(FLAGS.checkpoint)
    print(f"wrote {out} from {directory} step {step}; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({out!r})")


if __name__ == "__main__":
    cli.run(main, define_flags)
