"""The Hugging Face Qwen2 <-> our parameter map, as a table of rules.

Each rule maps a Hugging Face tensor name (regex) to a path in our parameter tree and says how
the array changes: "same" (identical shape), "flat" (Hugging Face keeps it 1-D, we split heads),
or an int: the number of our leading dims that form Hugging Face's input dimension (its
``nn.Linear`` stores ``[out, in]``; we store ``[in..., out...]`` so that einsums read naturally).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import numpy as np

from omniflatten_jax.config import ModelConfig

Transform = int | str

RULES: tuple[tuple[str, str, Transform], ...] = (
    (r"model\.embed_tokens\.weight", "embed", "same"),
    (r"model\.norm\.weight", "final_norm/scale", "flat"),
    (r"lm_head\.weight", "lm_head", 1),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", r"layers/\1/attn/\2/kernel", 1),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias", r"layers/\1/attn/\2/bias", "flat"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"layers/\1/attn/o/kernel", 2),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"layers/\1/mlp/\2/kernel", 1),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers/\1/input_norm/scale", "flat"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight",
     r"layers/\1/post_attn_norm/scale", "flat"),
)


def hf_names(cfg: ModelConfig) -> list[str]:
    """Every tensor a Hugging Face Qwen2 checkpoint of this config holds."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.{w}" for x in "qkv" for w in ("weight", "bias")]
        names += [p + "self_attn.o_proj.weight"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return names


def rule_for(hf_name: str) -> tuple[tuple[str | int, ...], Transform]:
    """Our tree path (dict keys; layer indices as ints) and its transform for one HF tensor."""
    for pattern, template, transform in RULES:
        match = re.fullmatch(pattern, hf_name)
        if match:
            path = match.expand(template).split("/")
            return tuple(int(p) if p.isdigit() else p for p in path), transform
    raise KeyError(f"no rule maps Hugging Face tensor {hf_name!r}")


def to_ours(hf_array: np.ndarray, our_shape: tuple[int, ...], transform: Transform
            ) -> np.ndarray:
    if isinstance(transform, int):
        return hf_array.T.reshape(our_shape)
    return hf_array.reshape(our_shape)


def to_hf(ours: np.ndarray, transform: Transform) -> np.ndarray:
    if transform == "same":
        return ours
    if transform == "flat":
        return ours.reshape(-1)
    return ours.reshape(math.prod(ours.shape[:transform]), -1).T


def get_path(tree: dict, path: tuple) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def iter_hf(cfg: ModelConfig) -> Iterator[tuple[str, tuple, Transform]]:
    for name in hf_names(cfg):
        path, transform = rule_for(name)
        yield name, path, transform
