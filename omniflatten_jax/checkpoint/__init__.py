"""Checkpoints: Orbax steps that describe themselves, verified on every read.

Owns the step format (`store`: parameters, `meta` with the model config, token layout,
lineage, stage and decoding policy, the speech tokenizer file; the resume and hand-over
checks), the per-array `checksums`, the training run's `checkpointer` (periodic, atomic saves
and restores of the whole train state), `format_upgrade` (older formats described anew) and
`orbax_echoes` (one failure reported once). May import `config`, `tokens`, `distributed`,
`speech` and `finite`; never training, inference or the commands. The names below are the step
format's API, used as ``checkpoint.load_params(...)``.

`restore_placed` (a checkpoint's parameters straight onto a mesh) is imported from
`checkpoint.placed`: it needs the model, which the step format does not.
"""

from omniflatten_jax.checkpoint.store import (
    FORMAT,
    ArchitectureMismatchError,
    CheckpointMeta,
    CheckpointMismatchError,
    CorruptCheckpointError,
    abstract_like,
    check_architecture,
    check_complete,
    check_continues,
    described_items,
    load_meta,
    load_params,
    load_speech_tokenizer,
    load_speech_tokenizer_bytes,
    resolve,
    restore_items,
    save_params,
    sha256,
    store_decoding,
    training_step_within,
)

__all__ = [
    "FORMAT", "ArchitectureMismatchError", "CheckpointMeta", "CheckpointMismatchError",
    "CorruptCheckpointError", "abstract_like", "check_architecture", "check_complete",
    "check_continues", "described_items", "load_meta", "load_params", "load_speech_tokenizer",
    "load_speech_tokenizer_bytes", "resolve", "restore_items", "save_params", "sha256",
    "store_decoding", "training_step_within",
]
