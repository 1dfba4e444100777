"""Adds the stage description to a checkpoint written before checkpoints described themselves.

    python experiments/upgrade_checkpoint.py --checkpoint OLD --out NEW \\
        (--settings OLD_STAGE/inference.json | --stage duplex_3 --speech_tokenizer FILE \\
         [--context_chunks N] [--set flatten.FIELD=VALUE ...])

Format-1 checkpoints (model, layout and lineage only) still load everywhere, but the duplex
command and evaluation need the stage, its flatten settings, its context window and the speech
tokenizer. Duplex stages of that time wrote them beside their checkpoints as `inference.json`
(`--settings` reads it); otherwise give them by flag. The parameters are copied unchanged into
a new params-only checkpoint at the same step, which carries the description and the tokenizer.

Only a checkpoint without a description is upgraded: one that already names its stage is
refused (relabelling a step would make the duplex command read its weights in another stage's
layout), and so is a stage name that does not exist. The new folder is written beside `out`
and renamed into place (`checkpoint.staging`): a non-empty `out` is refused unless
``overwrite``, which never replaces a training run or the checkpoint being read.
"""

from __future__ import annotations

from omniflatten_jax import checkpoint
from omniflatten_jax.checkpoint.staging import check_destination, staged_folder
from omniflatten_jax.config import FlattenConfig
from omniflatten_jax.config.stages import CHUNKED_STAGES, STAGES
from omniflatten_jax.distributed import paths
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.tokens.chunk_layout import chunk_layout


def upgrade(path: str, out: str, *, stage: str, flatten: FlattenConfig, speech_tokenizer: str,
            context_chunks: int | None, overwrite: bool = False) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} does not exist; choose one of {', '.join(STAGES)}")
    check_destination(out, overwrite, path)
    current = checkpoint.load_meta(path)
    if current.stage is not None:
        raise ValueError(f"{path} already describes itself as a {current.stage} checkpoint: "
                         "upgrade adds a description to checkpoints written before they had "
                         "one, and never relabels a stage")
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
    with staged_folder(out, overwrite, path) as folder:
        checkpoint.save_params(folder, step, params, described, data)
    return paths.join(out, str(step))
