"""Next-token cross-entropy in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy: ``logits [B, T, V]`` predict ``targets [B, T]``."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over positions where `mask` is true, and the number of such positions."""
    count = jnp.sum(mask)
    return jnp.sum(token_losses(logits, targets) * mask) / jnp.maximum(count, 1), count
