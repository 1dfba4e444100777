"""The numerics guard: a step whose loss or gradients are not finite never reaches the weights.

Every step computes, on device, whether its loss and gradient norm are finite (a non-finite
gradient anywhere makes the norm non-finite), and applies its update only if so. The verdict
is carried in a few device scalars (`Guard`) that the host reads where it syncs anyway (logged
steps and saves), so the guard costs no extra host round trip:

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

Guard = dict[str, jax.Array]  # "step" (last step run), "skipped", "first_bad" (-1: none)


class Diverged(NonFiniteError):
    """Training produced a non-finite loss or gradient (and the configuration says stop)."""


def init_guard(step: int) -> Guard:
    return {"step": np.int32(step), "skipped": np.int32(0), "first_bad": np.int32(-1)}


def apply_if_finite(on_nonfinite: str, guard: Guard, finite: jax.Array, new, old):
    """``(state, guard)``: `new` where this step may update, else `old` (traced, in the step)."""
    allowed = finite if on_nonfinite == "skip" else finite & (guard["first_bad"] < 0)
    state = jax.tree.map(lambda n, o: jnp.where(allowed, n, o), new, old)
    step = guard["step"] + 1
    bad = ~finite
    guard = {"step": step, "skipped": guard["skipped"] + bad.astype(jnp.int32),
             "first_bad": jnp.where(bad & (guard["first_bad"] < 0), step, guard["first_bad"])}
    return state, guard


def check(guard: Guard, train: TrainConfig, stage: str, checkpoints: str) -> int:
    """On the host: raises `Diverged` when the run must stop; returns the steps skipped."""
    guard = {k: int(v) for k, v in jax.device_get(guard).items()}
    first, skipped = guard["first_bad"], guard["skipped"]
    if first < 0:
        return 0
    saved = f"The checkpoints in {checkpoints} are all from before it."
    if train.on_nonfinite == "stop":
        raise Diverged(
            f"{stage}: step {first} had a non-finite loss or gradient; the run stopped (its "
            f"weights are those before step {first}, nothing after it was saved). {saved} "
            "Lower the learning rate (optimizer.peak_lr) or raise optimizer.warmup_steps, or "
            "set train.on_nonfinite=skip to skip such steps.")
    if skipped > train.max_skipped_steps:
        raise Diverged(
            f"{stage}: {skipped} steps had a non-finite loss or gradient (the first at step "
            f"{first}), more than train.max_skipped_steps={train.max_skipped_steps}; the run "
            f"stopped. {saved} Lower the learning rate (optimizer.peak_lr).")
    return skipped
