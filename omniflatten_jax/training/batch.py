"""Flat sequences -> fixed-shape training rows (one example per row, padded)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniflatten_jax.flatten import FlatSequence, Stream


def padded_rows(seqs: Sequence[FlatSequence], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One sequence per row, padded to `length` (segment 0, no loss). Too long is an error."""
    too_long = [i for i, s in enumerate(seqs) if len(s) > length]
    if too_long:
        raise ValueError(f"sequences {too_long[:8]} are longer than the row length {length}; "
                         "raise the length or split them")
    n = len(seqs)
    rows = {"tokens": np.full((n, length), pad_id, np.int32),
            "positions": np.zeros((n, length), np.int32),
            "segment_ids": np.zeros((n, length), np.int32),
            "loss_mask": np.zeros((n, length), bool),
            "streams": np.full((n, length), Stream.PAD, np.int8)}
    for i, s in enumerate(seqs):
        k = len(s)
        rows["tokens"][i, :k] = s.tokens
        rows["positions"][i, :k] = np.arange(k)
        rows["segment_ids"][i, :k] = 1
        rows["loss_mask"][i, :k] = s.loss_mask
        rows["streams"][i, :k] = s.streams
    return rows
