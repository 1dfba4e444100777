"""The method's optimiser: AdamW (0.9, 0.95), weight decay 0.1, warm-up then cosine, clipping."""

from __future__ import annotations

import jax
import optax

from omniflatten_jax.config import OptimizerConfig


def learning_rate(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.peak_lr * cfg.end_lr_ratio)


def decay_mask(params):
    """Weight decay on matrices only; biases and norm scales are not decayed (common practice;
    the paper does not say)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(learning_rate(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )
