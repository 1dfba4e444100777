"""Held-out cross-entropy per stream: what every dialogue stage reports in its eval.json."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.tokens.batches import FIELDS, fixed_groups, padded_rows
from omniflatten_jax.tokens.sequence import FlatSequence
from omniflatten_jax.training.step import loss_and_metrics


def stream_cross_entropy(placed: PlacedModel, examples: Sequence[FlatSequence], seq_len: int,
                         pad_id: int, batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy (nats) over the loss-masked positions, overall and per
    stream, with the number of tokens behind each figure."""
    if not examples:
        raise ValueError("no held-out examples to evaluate")
    rows_sharding = {k: placed.batch_sharding((batch_size, seq_len)) for k in FIELDS}
    fn = placed.jit("stream_cross_entropy", functools.partial(loss_and_metrics, placed.model),
                    batch_size, seq_len, in_shardings=(placed.param_shardings, rows_sharding),
                    out_shardings=placed.replicated)
    no_loss = FlatSequence(examples[0].tokens, examples[0].streams,
                           np.zeros_like(examples[0].loss_mask))  # fills the last batch
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for group, _ in fixed_groups(examples, batch_size, filler=no_loss):
        rows = padded_rows(group, seq_len, pad_id)
        _, metrics = fn(placed.params, {k: placed.put(v, batch=True) for k, v in rows.items()})
        for key, (total, count) in jax.tree.map(placed.get, metrics["per_stream"]).items():
            sums[key] = sums.get(key, 0.0) + float(total)
            counts[key] = counts.get(key, 0) + int(count)
    per_stream = {k: sums[k] / counts[k] for k in sums if counts[k]}
    total = sum(counts.values())
    return {"overall": sum(sums.values()) / max(total, 1), "per_stream": per_stream,
            "tokens": {k: v for k, v in counts.items() if v}}
