"""Batched generation from prompts of different lengths (ASR, TTS, half-duplex turns).

Prompts are left-padded to a common length (padding is masked out of attention and RoPE
positions) and handed to the decoding engine (`inference.engine`), which prefills a
preallocated KV cache and decodes inside one jitted loop. Only `legal` ids can be produced (for
example text ids and [EOT] when transcribing); a row stops at its first stop id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniflatten_jax.inference.engine import (
    PlacedRows,
    Sampling,
    feed_and_generate,
    place_state,
    row_policy,
)
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.batches import fixed_groups

BUCKET = 16  # prompt lengths are rounded up to this, to bound the number of compilations


def greedy_generate(placed: PlacedModel, prompts: Sequence[np.ndarray], *, legal: np.ndarray,
                    stop_ids: Sequence[int], max_new: int, pad_id: int,
                    batch_size: int = 16) -> list[np.ndarray]:
    """Generated ids per prompt, up to and excluding the first stop id."""
    if not len(stop_ids):
        raise ValueError("give at least one stop id")
    legal = np.asarray(legal, bool).copy()
    legal[np.asarray(stop_ids)] = True
    legal = placed.put(legal[None])
    pattern = placed.put(np.zeros((max_new,), np.int32))  # every position: the one legal row
    stop = placed.put(np.asarray(stop_ids, np.int32))
    keys = placed.keys([0] * batch_size)  # unused by greedy decoding
    rows = PlacedRows.create(placed, row_policy([Sampling()]))  # one legal row, greedy
    every = placed.put(np.ones((batch_size,), bool))
    results: list[np.ndarray] = []
    for group, n in fixed_groups(prompts, batch_size):
        width = -(-max(len(p) for p in group) // BUCKET) * BUCKET
        tokens = np.full((batch_size, width), pad_id, np.int32)
        valid = np.zeros((batch_size, width), bool)
        for i, prompt in enumerate(group):
            tokens[i, width - len(prompt):] = prompt
            valid[i, width - len(prompt):] = True
        cache = placed.init_cache(batch_size, width + max_new)
        out, _, _, _ = feed_and_generate(placed, cache, placed.put(tokens, batch=True),
                                         placed.put(valid, batch=True), legal, pattern, stop,
                                         keys, rows, place_state(placed, batch_size, 1), every)
        for row in placed.get(out)[:n]:
            hits = np.flatnonzero(np.isin(row, stop_ids))
            results.append(row[:hits[0]] if len(hits) else row)
    return results
