"""The pure train step: loss (in total and per stream), gradients, optimiser update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from omniflatten_jax.flatten import Stream
from omniflatten_jax.model import Params, Transformer
from omniflatten_jax.training.guard import Guard, apply_if_finite
from omniflatten_jax.training.loss import chunked_token_losses, token_losses

Batch = dict[str, jax.Array]  # tokens, positions, segment_ids, loss_mask, streams: [B, T]


def loss_and_metrics(model: Transformer, params: Params, batch: Batch
                     ) -> tuple[jax.Array, dict[str, Any]]:
    """Next-token cross-entropy on positions the loss mask marks (position t predicts t+1).

    Returns the mean loss and, per `Stream`, the summed loss and token count so that callers can
    report ASR text / TTS speech (alignment) or assistant text / speech (dialogue) separately.
    """
    targets = batch["tokens"][:, 1:]
    segments = batch["segment_ids"]
    # A target in another packed segment than its input is never predicted.
    mask = batch["loss_mask"][:, 1:] & (segments[:, 1:] == segments[:, :-1])
    # The whole row goes through the model (the last logit predicts nothing): cuDNN flash
    # attention trains only on even lengths, and seq_len is even where T - 1 would not be.
    if model.cfg.loss_chunk:
        hidden, head = model.hidden(params, batch["tokens"], batch["positions"], segments)
        per_token = chunked_token_losses(hidden[:, :-1], head, targets,
                                         model.cfg.loss_chunk) * mask
    else:
        logits = model.logits(params, batch["tokens"], batch["positions"], segments)[:, :-1]
        per_token = token_losses(logits, targets) * mask
    count = jnp.sum(mask)
    loss = jnp.sum(per_token) / jnp.maximum(count, 1)
    streams = batch["streams"][:, 1:]
    per_stream = {s.key: (jnp.sum(jnp.where(streams == s, per_token, 0.0)),
                          jnp.sum((streams == s) & mask)) for s in Stream if s != Stream.PAD}
    return loss, {"loss": loss, "tokens": count, "per_stream": per_stream}


def train_step(model: Transformer, tx: optax.GradientTransformation, params: Params,
               opt_state: optax.OptState, batch: Batch):
    """One optimiser step; jit it with explicit shardings and donate params and opt_state."""
    grad_fn = jax.value_and_grad(lambda p: loss_and_metrics(model, p, batch), has_aux=True)
    (_, metrics), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, metrics


def guarded_train_step(model: Transformer, tx: optax.GradientTransformation, on_nonfinite: str,
                       params: Params, opt_state: optax.OptState, guard: Guard, batch: Batch):
    """`train_step` whose update applies only when its loss and gradients are finite
    (`training.guard`); returns ``(params, opt_state, guard, metrics)``."""
    new_params, new_opt_state, metrics = train_step(model, tx, params, opt_state, batch)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    (params, opt_state), guard = apply_if_finite(
        on_nonfinite, guard, finite, (new_params, new_opt_state), (params, opt_state))
    return params, opt_state, guard, metrics
