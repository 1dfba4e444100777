"""Next-token cross-entropy over a loss mask, in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over positions where `mask` is true; also returns the token count.

    ``logits [B, T, V]`` predict ``targets [B, T]`` (already shifted by the caller).
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    per_token = (log_z - target_logit) * mask
    count = jnp.sum(mask)
    return jnp.sum(per_token) / jnp.maximum(count, 1), count
