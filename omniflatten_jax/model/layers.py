"""Building blocks of the decoder: a logically-annotated einsum, RMSNorm, RoPE."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # Hugging Face Qwen2's initializer_range


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Sequence[str | None], dtype,
          init: str = "normal") -> nnx.Param:
    """A parameter that carries its logical axis names (read by `sharding.tree_shardings`)."""
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), dtype)
    elif init == "zeros":
        value = jnp.zeros(tuple(shape), dtype)
    elif init == "ones":
        value = jnp.ones(tuple(shape), dtype)
    else:
        raise ValueError(init)
    return nnx.Param(value, logical_axes=tuple(axes))


class Einsum(nnx.Module):
    """``y = einsum(equation, x, kernel) (+ bias)``, computed in `dtype`."""

    def __init__(self, equation: str, shape: Sequence[int], axes: Sequence[str], *,
                 bias_dims: int = 0, dtype, param_dtype, rngs: nnx.Rngs):
        self.equation = equation
        self.dtype = dtype
        self.kernel = param(rngs, shape, axes, param_dtype)
        if bias_dims:
            self.bias = param(rngs, shape[-bias_dims:], axes[-bias_dims:], param_dtype, "zeros")
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Qwen's RMSNorm over the last axis: normalise in fp32, scale, return in the input's
    dtype. `axis_name` is the normalised axis's logical name (a q/k norm's is "head_dim")."""

    def __init__(self, size: int, eps: float, param_dtype, axis_name: str = "embed"):
        self.eps = eps
        self.scale = param(None, (size,), (axis_name,), param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * normed).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding on ``x [B, T, heads, D]`` at integer ``positions [B, T]``.

    Hugging Face's "rotate half" convention: dimension i pairs with i + D/2.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
