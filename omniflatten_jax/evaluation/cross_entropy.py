"""Held-out cross-entropy per stream: what every dialogue stage reports in its eval.json."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from omniflatten_jax.flatten import FlatSequence
from omniflatten_jax.model import Params, Transformer
from omniflatten_jax.training.batch import padded_rows
from omniflatten_jax.training.step import loss_and_metrics


def stream_cross_entropy(model: Transformer, params: Params, examples: Sequence[FlatSequence],
                         seq_len: int, pad_id: int, batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy (nats) over the loss-masked positions, overall and per
    stream, with the number of tokens behind each figure."""
    if not examples:
        raise ValueError("no held-out examples to evaluate")
    fn = jax.jit(functools.partial(loss_and_metrics, model))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for lo in range(0, len(examples), batch_size):
        group = list(examples[lo:lo + batch_size])
        group += [FlatSequence(g.tokens, g.streams, np.zeros_like(g.loss_mask))
                  for g in group[:1]] * (batch_size - len(group))  # fixed shape, no loss
        rows = padded_rows(group, seq_len, pad_id)
        _, metrics = fn(params, rows)
        for key, (total, count) in jax.device_get(metrics["per_stream"]).items():
            sums[key] = sums.get(key, 0.0) + float(total)
            counts[key] = counts.get(key, 0) + int(count)
    per_stream = {k: sums[k] / counts[k] for k in sums if counts[k]}
    total = sum(counts.values())
    return {"overall": sum(sums.values()) / max(total, 1), "per_stream": per_stream,
            "tokens": {k: v for k, v in counts.items() if v}}
