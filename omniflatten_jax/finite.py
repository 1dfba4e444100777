"""Non-finite weights are refused wherever weights are read: a NaN model must not be exported,
decoded from or trained on, and the error says which tensor and what to do instead."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class NonFiniteError(ValueError):
    """Weights (or a training step) hold NaN or infinite values."""


@jax.jit
def _nonfinite_counts(tree):
    return jax.tree.map(lambda x: jnp.sum(~jnp.isfinite(x)), tree)


def nonfinite_leaves(tree) -> dict[str, int]:
    """``{path: count}`` of the leaves holding NaN or inf (empty when all are finite). One
    fused reduction per leaf on the devices that hold it; works on sharded arrays."""
    counts = jax.device_get(_nonfinite_counts(tree))
    return {jax.tree_util.keystr(path): int(n)
            for path, n in jax.tree_util.tree_leaves_with_path(counts) if n}


def check_finite(tree, where: str, fix: str) -> None:
    """Raises `NonFiniteError` naming `where`, the first offending tensors and `fix`."""
    bad = nonfinite_leaves(tree)
    if bad:
        named = ", ".join(f"{k} ({n} values)" for k, n in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise NonFiniteError(f"{where} holds NaN or infinite weights: {named}{more}. {fix}")
