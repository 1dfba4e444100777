"""Streams a recording through a trained duplex stage chunk by chunk, as if live.

    python experiments/duplex.py --checkpoint=CKPT --input=user.wav --out_dir=DIR
        [--decoding=FIELD=VALUE ...] [--params=replicated] [--speech_tokenizer=FILE]

Everything but the audio comes from the checkpoint (`inference.duplex.load_duplex`): the stage,
its chunk layout, its context window, its decoding policy (flags change fields of it) and its
speech tokenizer. `inference.recording` lists the files written: output.wav (time-synchronous
with the input), the text streams, events.json with the per-chunk latency, timeline.png.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config import PARAM_PLACEMENTS

    flags.DEFINE_string("checkpoint", None, "a duplex stage's checkpoints folder or one step "
                        "folder in it", required=True)
    flags.DEFINE_string("input", None, "the user's audio (any common format)", required=True)
    flags.DEFINE_string("out_dir", None, "where the outputs go", required=True)
    flags.DEFINE_string("speech_tokenizer", None, "a speech tokenizer file to use instead of "
                        "the checkpoint's own (same number of codes)")
    flags.DEFINE_enum("params", "sharded", PARAM_PLACEMENTS, "parameters sharded over the "
                      "local devices (FSDP, as trained) or replicated on each (no gathers per "
                      "token; the model must fit a chip)")
    cli.define_policy_flags()


def main() -> None:
    """Cheapest checks first: the output folder and the input before the checkpoint is read,
    and the checkpoint's description before its weights."""
    from omniflatten_jax.inference.duplex import load_duplex
    from omniflatten_jax.inference.recording import (
        check_recording,
        prepare_out_dir,
        stream_recording,
    )

    prepare_out_dir(FLAGS.out_dir)
    check_recording(FLAGS.input)
    model = load_duplex(FLAGS.checkpoint, placement=FLAGS.params,
                        speech_tokenizer=FLAGS.speech_tokenizer)
    model = model.with_policy(cli.policy_from_flags(model.settings.policy))
    summary = stream_recording(model, FLAGS.input, FLAGS.out_dir, title=f"{model.stage} "
                               f"{model.where} on {os.path.basename(FLAGS.input)}")
    latency = summary["latency_ms"]
    print(f"{FLAGS.input}: {summary['input_seconds']} s in {summary['chunks']} chunks of "
          f"{summary['chunk_audio_ms']:.0f} ms; decode latency per chunk mean "
          f"{latency['mean']} ms, p95 {latency['p95']} ms, max {latency['max']} ms "
          f"({summary['context_slides']} context slides; compiled beforehand in "
          f"{summary['compile_seconds']} s); real-time factor {summary['real_time_factor']}")
    print(f"wrote {', '.join(sorted(os.listdir(FLAGS.out_dir)))} to {FLAGS.out_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags)
