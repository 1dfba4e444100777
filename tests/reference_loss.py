"""The plain masked cross-entropy over full logits: the reference the chunked loss is held to."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omniflatten_jax.training.loss import token_losses


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over positions where `mask` is true, and the number of such positions."""
    count = jnp.sum(mask)
    return jnp.sum(token_losses(logits, targets) * mask) / jnp.maximum(count, 1), count
