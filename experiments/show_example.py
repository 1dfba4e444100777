"""Prints one flattened dialogue example as readable stream columns, chunk by chunk.

    python experiments/show_example.py --stage=duplex_3 [--workdir=./workdir] [--index=0]

Run it after the dialogue data exists (any dialogue stage builds it). Speech codes print as
numbers, `.` is <silent_speech>, `_` is <silent_text>, and text tokens print as what they say.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def main(argv=None):
    from experiments.configs import get_config
    from omniflatten_jax.config.stages import CHUNKED_STAGES
    from omniflatten_jax.stage_plan import plan_stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="duplex_3", choices=CHUNKED_STAGES)
    parser.add_argument("--workdir", default="./workdir")
    parser.add_argument("--config", default="embedded")
    parser.add_argument("--index", type=int, default=0, help="which test dialogue")
    parser.add_argument("--set", action="append", default=[], help="config overrides")
    args = parser.parse_args(argv)
    cfg = get_config(args.config, args.set)
    plan = plan_stage(cfg, args.stage)

    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.dialogue_examples import duplex_windows
    from data_pipelines.prepare import prepare_dialogues
    from omniflatten_jax.speech import load_speech_tokenizer
    from omniflatten_jax.tokens.text_tokenizers import text_tokenizer

    prepared = prepare_dialogues(cfg, args.workdir)
    record = data_source(prepared.data_dir, prepared.config_name, "test", cfg.layout)[args.index]
    layout, tok = cfg.layout, text_tokenizer(cfg.layout)
    chunk = plan.chunk
    frame_rate = load_speech_tokenizer(prepared.tokenizer_path).frame_rate
    # The whole dialogue as one window (training cuts it into plan.context_chunks windows).
    flat = duplex_windows(record, layout, plan, per_window=10**9)[0]
    streams = chunk.unflatten(flat.tokens)
    print(f"{record['id'].decode()} ({args.stage}; turn changes: "
          f"{record['boundaries'].decode()}); one row per chunk of {plan.flatten.speech_chunk} "
          f"speech frames ({1000 * plan.flatten.speech_chunk / frame_rate:.0f} ms); training "
          f"windows of {plan.context_chunks} chunks")
    print(" | ".join(f"{key}" for key in chunk.keys))
    for i in range(len(flat.tokens) // chunk.chunk_len):
        print(f"{i:3d}: " + " | ".join(describe(streams[k][i], layout, tok) for k in chunk.keys))
    print(f"flattened: {len(flat.tokens)} tokens; loss on "
          f"{sorted(s.key for s in chunk.loss_streams)}")


if __name__ == "__main__":
    main()
