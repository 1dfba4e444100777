"""The decoder of each model family (Flax NNX) and its pure-function face."""

from omniflatten_jax.model.transformer import DecodeCache, Params, Transformer, transformer

__all__ = ["DecodeCache", "Params", "Transformer", "transformer"]
