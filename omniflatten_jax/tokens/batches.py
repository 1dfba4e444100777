"""What a batch is: its fields, fixed-shape rows from examples, fixed-size groups of inputs.

Every training and evaluation batch is ``{field: [batch, length]}`` with the fields below
(the Grain pipelines, `padded_rows` and the train step all read `FIELDS`). Shapes are fixed so
that each jitted function compiles once: rows are padded to a length, groups to a size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np

from omniflatten_jax.tokens.sequence import FlatSequence, Stream

T = TypeVar("T")

# tokens: ids; positions: RoPE position within each packed example; segment_ids: which
# example (0 = padding); loss_mask: positions trained on; streams: the `Stream` of each position.
FIELDS = ("tokens", "positions", "segment_ids", "loss_mask", "streams")
FIELD_DTYPES = {"tokens": np.int32, "positions": np.int32, "segment_ids": np.int32,
                "loss_mask": np.bool_, "streams": np.int8}


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


def fixed_groups(items: Sequence[T], size: int, filler: T | None = None
                 ) -> Iterator[tuple[list[T], int]]:
    """`items` in groups of exactly `size` (one compiled shape): ``(group, n_real)``, the last
    group completed with `filler` (default: its last item), whose results callers drop."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for lo in range(0, len(items), size):
        group = list(items[lo:lo + size])
        n = len(group)
        group += [group[-1] if filler is None else filler] * (size - n)
        yield group, n
