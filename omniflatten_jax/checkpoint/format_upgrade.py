"""Adds the stage description to a checkpoint written before checkpoints described themselves.

    python -m omniflatten_jax.checkpoint.format_upgrade --checkpoint OLD --out NEW \\
        (--settings OLD_STAGE/inference.json | --stage duplex_3 --speech_tokenizer FILE \\
         [--context_chunks N] [--set flatten.FIELD=VALUE ...])

Format-1 checkpoints (model, layout and lineage only) still load everywhere, but the duplex
command and evaluation need the stage, its flatten settings, its context window and the speech
tokenizer. Duplex stages of that time wrote them beside their checkpoints as `inference.json`
(`--settings` reads it); otherwise give them by flag. The parameters are copied unchanged into
a new params-only checkpoint at the same step, which carries the description and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from omniflatten_jax import checkpoint
from omniflatten_jax.config import FlattenConfig, from_dict, override
from omniflatten_jax.config.stages import CHUNKED_STAGES
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.tokens.chunk_layout import chunk_layout


def upgrade(path: str, out: str, *, stage: str, flatten: FlattenConfig, speech_tokenizer: str,
            context_chunks: int | None) -> str:
    params, meta, where = checkpoint.load_params(path)
    with open(speech_tokenizer, "rb") as f:
        data = f.read()
    tokenizer = load_speech_tokenizer(speech_tokenizer)
    if tokenizer.num_codes != meta.layout.num_speech_codes:
        raise ValueError(f"{speech_tokenizer} has {tokenizer.num_codes} codes; {where} was "
                         f"trained on {meta.layout.num_speech_codes}")
    if stage in CHUNKED_STAGES:
        chunk_layout(stage, flatten)  # the layout must exist
        if not context_chunks:
            raise ValueError(f"{stage} is a duplex stage: give --context_chunks (its "
                             "dialogue_train.seq_len // chunk length)")
    described = checkpoint.CheckpointMeta(
        meta.model, meta.layout, meta.lineage + ({"kind": "upgrade", "path": where},),
        stage=stage, flatten=None if stage == "alignment" else flatten,
        context_chunks=context_chunks,
        speech_tokenizer_sha256=checkpoint.sha256(data))
    _, step = checkpoint.resolve(path)
    return checkpoint.save_params(out, step, params, described, data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m omniflatten_jax.checkpoint.format_upgrade",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the old checkpoint (folder or step)")
    parser.add_argument("--out", required=True, help="a new checkpoints folder to write")
    parser.add_argument("--settings", help="the old stage's inference.json")
    parser.add_argument("--stage", help="alignment, half_duplex, duplex_4, duplex_3, duplex_2")
    parser.add_argument("--speech_tokenizer", help="the tokenizer file the stage trained with")
    parser.add_argument("--context_chunks", type=int, help="duplex: the training window")
    parser.add_argument("--set", action="append", default=[],
                        help="flatten settings, e.g. --set=flatten.text_chunk=8")
    args = parser.parse_args(argv)
    try:
        settings = {}
        if args.settings:
            with open(args.settings) as f:
                settings = json.load(f)
        flatten = from_dict(FlattenConfig, settings.get("flatten", {}))
        for assignment in args.set:
            if not assignment.startswith("flatten."):
                raise ValueError(f"--set takes flatten.FIELD=VALUE, not {assignment!r}")
            flatten = override(flatten, assignment[len("flatten."):])
        stage = args.stage or settings.get("stage")
        tokenizer = args.speech_tokenizer or settings.get("speech_tokenizer")
        if not stage or not tokenizer:
            raise ValueError("give --stage and --speech_tokenizer (or --settings)")
        step_dir = upgrade(args.checkpoint, args.out, stage=stage, flatten=flatten,
                           speech_tokenizer=tokenizer,
                           context_chunks=args.context_chunks or settings.get("context_chunks"))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {step_dir}: {stage}, speech tokenizer stored "
          f"({os.path.basename(tokenizer)})")


if __name__ == "__main__":
    main(sys.argv[1:])
