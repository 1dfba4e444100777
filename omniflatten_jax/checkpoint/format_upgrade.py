"""Adds the stage description to a checkpoint written before checkpoints described themselves.

    python experiments/upgrade_checkpoint.py --checkpoint OLD --out NEW \\
        (--settings OLD_STAGE/inference.json | --stage duplex_3 --speech_tokenizer FILE \\
         [--context_chunks N] [--set flatten.FIELD=VALUE ...])

Format-1 checkpoints (model, layout and lineage only) still load everywhere, but the duplex
command and evaluation need the stage, its flatten settings, its context window and the speech
tokenizer. Duplex stages of that time wrote them beside their checkpoints as `inference.json`
(`--settings` reads it); otherwise give them by flag. The parameters are copied unchanged into
a new params-only checkpoint at the same step, which carries the description and the tokenizer.
"""

from __future__ import annotations

from omniflatten_jax import checkpoint
from omniflatten_jax.config import FlattenConfig
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
