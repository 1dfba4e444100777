"""Next-token cross-entropy in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy: ``logits [B, T, V]`` predict ``targets [B, T]``."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def chunked_token_losses(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                         chunk: int) -> jax.Array:
    """`token_losses` of ``hidden [B, T, E] @ head [E, V]`` without the full logits.

    The sequence is cut into chunks of `chunk` positions (padded to a multiple); a scan
    computes each chunk's fp32 logits, their log-sum-exp and the target's logit, and
    `jax.checkpoint` makes the backward pass recompute them chunk by chunk, so at most
    ``[B, chunk, V]`` logits exist at any time instead of ``[B, T, V]`` (5 GB at 8 x 1024
    tokens and 156k ids). The result is the same per-position losses, in fp32."""
    b, t, e = hidden.shape
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    xs = (jnp.moveaxis(hidden.reshape(b, n, chunk, e), 1, 0),
          jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0))

    @jax.checkpoint
    def one(x, y):
        return token_losses(jnp.einsum("bce,ev->bcv", x, head), y)

    _, losses = jax.lax.scan(lambda carry, xy: (carry, one(*xy)), None, xs)
    return jnp.moveaxis(losses, 0, 1).reshape(b, n * chunk)[:, :t]
