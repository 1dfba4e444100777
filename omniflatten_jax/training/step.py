"""The pure train step: loss (in total and per stream), gradients, optimiser update."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from omniflatten_jax.model import Params, Transformer
from omniflatten_jax.tokens.sequence import Stream
from omniflatten_jax.training.guard import Guard, apply_if_sound, sound
from omniflatten_jax.training.loss import chunked_token_losses, token_losses

Batch = dict[str, jax.Array]  # tokens, positions, segment_ids, loss_mask, streams: [B, T]


@dataclasses.dataclass(frozen=True)
class TurnWeight:
    """Extra loss weight where the assistant's speech stream changes state: a target that is
    speech after silence (it starts) or silence after speech (it stops), on the assistant
    speech stream (`TrainConfig.turn_weight`). Those few positions carry the whole
    speak/listen decision among thousands of positions that repeat the state before them."""

    weight: float = 1.0
    silent_id: int = -1  # <silent_speech>


def turn_changes(batch: Batch, silent_id: int) -> jax.Array:
    """``[B, T - 1]`` true where target t+1 is an assistant speech token whose silence differs
    from the assistant speech token before it (in the same packed segment)."""
    tokens, streams, segments = batch["tokens"], batch["streams"], batch["segment_ids"]
    speech = streams == Stream.ASSISTANT_SPEECH
    index = jnp.where(speech, jnp.arange(tokens.shape[1])[None], -1)
    last = jax.lax.cummax(index, axis=1)[:, :-1]  # the last speech position <= t
    before = jnp.take_along_axis(tokens, jnp.maximum(last, 0), axis=1)
    same = (last >= 0) & (jnp.take_along_axis(segments, jnp.maximum(last, 0), axis=1)
                          == segments[:, 1:])
    target = tokens[:, 1:]
    return speech[:, 1:] & same & ((target == silent_id) != (before == silent_id))


def loss_and_metrics(model: Transformer, params: Params, batch: Batch,
                     turn: TurnWeight = TurnWeight()) -> tuple[jax.Array, dict[str, Any]]:
    """Next-token cross-entropy on positions the loss mask marks (position t predicts t+1),
    with `turn`'s extra weight where the assistant starts or stops (the mean stays over the
    masked positions, so a weight of 1 is the plain mean).

    Returns the loss and, per `Stream`, the summed (unweighted) loss and token count so that
    callers can report ASR text / TTS speech (alignment) or assistant text / speech (dialogue)
    separately.
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
    weights = 1.0
    if turn.weight != 1.0:
        weights = 1.0 + (turn.weight - 1.0) * turn_changes(batch, turn.silent_id)
    loss = jnp.sum(per_token * weights) / jnp.maximum(count, 1)
    streams = batch["streams"][:, 1:]
    per_stream = {s.key: (jnp.sum(jnp.where(streams == s, per_token, 0.0)),
                          jnp.sum((streams == s) & mask)) for s in Stream if s != Stream.PAD}
    return loss, {"loss": loss, "tokens": count, "per_stream": per_stream}


def train_step(model: Transformer, tx: optax.GradientTransformation, params: Params,
               opt_state: optax.OptState, batch: Batch, turn: TurnWeight = TurnWeight()):
    """One optimiser step; jit it with explicit shardings and donate params and opt_state."""
    grad_fn = jax.value_and_grad(lambda p: loss_and_metrics(model, p, batch, turn),
                                 has_aux=True)
    (_, metrics), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, metrics


def guarded_train_step(model: Transformer, tx: optax.GradientTransformation, on_nonfinite: str,
                       params: Params, opt_state: optax.OptState, guard: Guard, batch: Batch,
                       turn: TurnWeight = TurnWeight(), divergence_factor: float = 0.0):
    """`train_step` whose update applies only when its loss and gradients are finite and its
    loss has not diverged (`training.guard`); returns ``(params, opt_state, guard, metrics)``."""
    new_params, new_opt_state, metrics = train_step(model, tx, params, opt_state, batch, turn)
    ok = sound(guard, metrics["loss"], metrics["grad_norm"], divergence_factor)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    (params, opt_state), guard = apply_if_sound(
        on_nonfinite, guard, ok, (new_params, new_opt_state), (params, opt_state),
        metrics["loss"], finite)
    return params, opt_state, guard, metrics
