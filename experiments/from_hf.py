"""Imports a Hugging Face folder (Qwen2, Qwen3) as a checkpoint with the extended token layout.

    python experiments/from_hf.py --hf_dir=Qwen2-0.5B/ --out=ckpt/qwen2_0_5b
        [--num_speech_codes=4096] [--text_tokenizer=qwen2] [--seed=0] [--overwrite]

How the added rows start, and what an export of ours keeps: `omniflatten_jax.export.from_hf`.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config.token_layout import TEXT_TOKENIZER_VOCAB

    flags.DEFINE_string("hf_dir", None, "a local Hugging Face Qwen2 folder", required=True)
    flags.DEFINE_string("out", None, "the checkpoints folder to write (step 0)", required=True)
    flags.DEFINE_integer("num_speech_codes", None, "speech codebook size (default 4096; an "
                         "export's own layout wins)")
    flags.DEFINE_enum("text_tokenizer", None, sorted(TEXT_TOKENIZER_VOCAB), "which "
                      "tokenizer's ids the text rows hold (default: qwen2)")
    flags.DEFINE_integer("seed", 0, "seed of the new rows' noise")
    flags.DEFINE_bool("overwrite", False, "replace --out if it exists and is not empty")


def main() -> None:
    from omniflatten_jax import checkpoint
    from omniflatten_jax.export.from_hf import import_hf
    from omniflatten_jax.model import transformer

    step_dir = import_hf(FLAGS.hf_dir, FLAGS.out, FLAGS.num_speech_codes, FLAGS.text_tokenizer,
                         FLAGS.seed, FLAGS.overwrite)
    meta = checkpoint.load_meta(step_dir)
    layout = meta.layout
    print(f"wrote {step_dir}: {transformer(meta.model, layout.vocab_size).num_params:,} "
          f"parameters, vocab {layout.vocab_size} (text {layout.text_vocab_size}, speech "
          f"{layout.num_speech_codes}, special {len(layout.special_tokens)})")


if __name__ == "__main__":
    cli.run(main, define_flags)
