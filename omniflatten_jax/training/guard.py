"""The numerics guard: a step whose loss or gradients are not finite, or whose loss left its
recent range by orders of magnitude, never reaches the weights.

Every step computes, on device, whether its loss and gradient norm are finite (a non-finite
gradient anywhere makes the norm non-finite) and whether its loss diverged though finite: more
than `TrainConfig.divergence_factor` times the recent average of the accepted steps' losses
and above the first loss of the run (what a model that learnt nothing yet scores), as a
learning rate far too high does (6.4 -> 6,444 -> 958). It applies its update only if
neither. The verdict is carried in a few device scalars (`Guard`) that the host reads where it
syncs anyway (logged steps and saves), so the guard costs no extra host round trip:

* ``on_nonfinite="stop"``: the first bad step freezes the weights (later steps change
  nothing) and the host stops the run at its next sync naming that step; nothing is saved
  after it, so the last good checkpoints stay the newest and are never rotated away.
* ``on_nonfinite="skip"``: bad updates are skipped and counted; the run stops once more than
  `TrainConfig.max_skipped_steps` were skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omniflatten_jax.config import TrainConfig
from omniflatten_jax.finite import NonFiniteError

# "step" (last step run), "skipped", "first_bad" (-1: none); the loss's "first" and "recent"
# levels (0: none yet); "diverged" (1 when the first bad step was finite but diverged), with
# "bad_loss" and "bad_recent" (its loss and the recent level it was judged against). No NaN in
# the initial values: hosts check that what they place is equal, and NaN != NaN.
Guard = dict[str, jax.Array]
RECENT_DECAY = 0.9  # the recent level: an exponential average over about 10 accepted steps


class Diverged(NonFiniteError):
    """Training produced a non-finite or diverged loss or gradient (and the configuration says
    stop, or too many were skipped)."""


def init_guard(step: int) -> Guard:
    return {"step": np.int32(step), "skipped": np.int32(0), "first_bad": np.int32(-1),
            "first": np.float32(0), "recent": np.float32(0), "diverged": np.int32(0),
            "bad_loss": np.float32(0), "bad_recent": np.float32(0)}


def sound(guard: Guard, loss: jax.Array, grad_norm: jax.Array,
          divergence_factor: float) -> jax.Array:
    """Whether a step may update: its loss and gradients are finite and its loss has not
    diverged (module doc; ``divergence_factor`` 0 turns that second check off)."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if not divergence_factor:
        return finite
    diverged = ((guard["recent"] > 0) & (loss > divergence_factor * guard["recent"])
                & (loss > guard["first"]))
    return finite & ~diverged


def apply_if_sound(on_nonfinite: str, guard: Guard, ok: jax.Array, new, old,
                   loss: jax.Array | None = None, finite: jax.Array | None = None):
    """``(state, guard)``: `new` where this step may update, else `old` (traced, in the step).
    `loss` (when given) moves the recent level and is recorded for a first bad step, and
    `finite` (its loss and gradients were finite) tells a divergence from a non-finite step."""
    allowed = ok if on_nonfinite == "skip" else ok & (guard["first_bad"] < 0)
    state = jax.tree.map(lambda n, o: jnp.where(allowed, n, o), new, old)
    step = guard["step"] + 1
    bad = ~ok
    first_bad = bad & (guard["first_bad"] < 0)
    out = dict(guard, step=step, skipped=guard["skipped"] + bad.astype(jnp.int32),
               first_bad=jnp.where(first_bad, step, guard["first_bad"]))
    if loss is not None:
        loss = loss.astype(jnp.float32)
        seen = guard["recent"] > 0
        out["first"] = jnp.where(allowed & ~seen, loss, guard["first"])
        out["recent"] = jnp.where(allowed, jnp.where(
            seen, RECENT_DECAY * guard["recent"] + (1 - RECENT_DECAY) * loss, loss),
            guard["recent"])
        out["bad_loss"] = jnp.where(first_bad, loss, guard["bad_loss"])
        out["bad_recent"] = jnp.where(first_bad, guard["recent"], guard["bad_recent"])
        if finite is not None:
            out["diverged"] = jnp.where(first_bad, finite.astype(jnp.int32), guard["diverged"])
    return state, out


def check(guard: Guard, train: TrainConfig, stage: str, checkpoints: str) -> int:
    """On the host: raises `Diverged` when the run must stop; returns the steps skipped."""
    guard = jax.device_get(guard)
    first, skipped = int(guard["first_bad"]), int(guard["skipped"])
    if first < 0:
        return 0
    loss, recent = float(guard.get("bad_loss", 0)), float(guard.get("bad_recent", 0))
    if int(guard.get("diverged", 0)) and recent > 0:
        what = (f"a diverged loss ({loss:.4g}, {loss / recent:,.0f} times the recent "
                f"{recent:.4g}; train.divergence_factor={train.divergence_factor:g})")
    else:
        what = "a non-finite loss or gradient"
    saved = f"The checkpoints in {checkpoints} are all from before it."
    if train.on_nonfinite == "stop":
        raise Diverged(
            f"{stage}: step {first} had {what}; the run stopped (its weights are those before "
            f"step {first}, nothing after it was saved). {saved} Lower the learning rate "
            "(optimizer.peak_lr) or raise optimizer.warmup_steps, or set "
            "train.on_nonfinite=skip to skip such steps.")
    if skipped > train.max_skipped_steps:
        raise Diverged(
            f"{stage}: {skipped} steps had a non-finite or diverged loss or gradient (the "
            f"first at step {first}: {what}), more than train.max_skipped_steps="
            f"{train.max_skipped_steps}; the run stopped. {saved} Lower the learning rate "
            "(optimizer.peak_lr).")
    return skipped
