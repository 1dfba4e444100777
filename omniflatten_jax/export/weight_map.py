"""Hugging Face tensors <-> our parameter tree, by the tables of the model's family.

Each family (`model.families`) lists its tensors: the Hugging Face name, our path, and how the
array changes ("same", "flat" or the number of our leading dims that form Hugging Face's input
dimension: `families.family.Transform`). This module applies those tables.
"""

from __future__ import annotations

import math

import numpy as np

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.model import families
from omniflatten_jax.model.families.family import TOP_TENSORS, UNTIED_HEAD, Transform


def tensor_map(cfg: ModelConfig) -> list[tuple[str, tuple, Transform]]:
    """Every tensor a Hugging Face checkpoint of this config holds: its name, our path (dict
    keys; layer indices as ints) and its transform."""
    top = TOP_TENSORS if cfg.tie_embeddings else TOP_TENSORS + (UNTIED_HEAD,)
    rules = [(name, path.split("/"), transform) for name, path, transform in top]
    for i in range(cfg.num_layers):
        rules += [(f"model.layers.{i}.{name}", ["layers", i, *path.split("/")], transform)
                  for name, path, transform in families.get(cfg.family).layer_tensors]
    return [(name, tuple(path), transform) for name, path, transform in rules]



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
