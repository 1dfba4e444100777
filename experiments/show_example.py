"""Prints one flattened dialogue example as readable stream columns, chunk by chunk.

    python experiments/show_example.py --stage=duplex_3 [--workdir=./workdir] [--index=0]

Run it after the dialogue data exists (any dialogue stage builds it). Speech codes print as
numbers, `.` is <silent_speech>, `_` is <silent_text>, and text tokens print as what they say.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config.stages import CHUNKED_STAGES

    flags.DEFINE_enum("stage", "duplex_3", CHUNKED_STAGES, "the duplex stage whose layout")
    flags.DEFINE_string("workdir", "./workdir", "the workdir whose dialogue data to read")
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_integer("index", 0, "which test dialogue")
    flags.DEFINE_multi_string("set", [], "configuration overrides")


def describe(tokens, layout, tok) -> str:
    out = []
    for t in tokens:
        t = int(t)
        if t == layout.special("<silent_speech>"):
            out.append(".")
        elif t == layout.special("<silent_text>"):
            out.append("_")
        elif layout.is_speech(t):
            out.append(str(t - layout.speech_offset))
        elif layout.is_text(t):
            out.append(repr(tok.decode([t]))[1:-1].replace(" ", "␣") or "?")
        else:
            out.append(layout.special_tokens[t - layout.special_offset])
    return " ".join(out)


def main() -> None:
    from experiments.configs import get_config
    from omniflatten_jax.stage_plan import plan_stage

    cfg = get_config(FLAGS.config, FLAGS.set)
    plan = plan_stage(cfg, FLAGS.stage)

    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.dialogue_examples import duplex_windows
    from data_pipelines.prepare import prepare_dialogues
    from omniflatten_jax.speech import load_speech_tokenizer
    from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

    prepared = prepare_dialogues(cfg, FLAGS.workdir)
    record = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)[FLAGS.index]
    layout, tok = cfg.layout, text_tokenizer(cfg.layout)
    chunk = plan.chunk
    frame_rate = load_speech_tokenizer(prepared.tokenizer_path).frame_rate
    # The whole dialogue as one window (training cuts it into plan.context_chunks windows).
    flat = duplex_windows(record, layout, plan, per_window=10**9)[0]
    streams = chunk.unflatten(flat.tokens)
    print(f"{record['id'].decode()} ({FLAGS.stage}; turn changes: "
          f"{record['boundaries'].decode()}); one row per chunk of {plan.flatten.speech_chunk} "
          f"speech frames ({1000 * plan.flatten.speech_chunk / frame_rate:.0f} ms); training "
          f"windows of {plan.context_chunks} chunks")
    print(" | ".join(f"{key}" for key in chunk.keys))
    for i in range(len(flat.tokens) // chunk.chunk_len):
        print(f"{i:3d}: " + " | ".join(describe(streams[k][i], layout, tok) for k in chunk.keys))
    print(f"flattened: {len(flat.tokens)} tokens; loss on "
          f"{sorted(s.key for s in chunk.loss_streams)}")


if __name__ == "__main__":
    cli.run(main, define_flags)
