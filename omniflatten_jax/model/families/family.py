"""What a model family is: its decoder's options and its Hugging Face format, as data.

The decoder (`model.decoder`) is one stack of RMSNorm, grouped-query attention with RoPE and a
SwiGLU MLP; the families of Qwen2's lineage differ from it only in options (a bias on the q/k/v
projections, an RMSNorm over each head's q and k). A `Family` holds those options and how its
Hugging Face folders look: `config.json`'s model type and what only this family writes or
refuses there, and its tensor names with where each goes in our parameter tree. A family whose
layers differ in more than options adds its module to this package and names it here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from omniflatten_jax.config import ModelConfig

# How an array changes between Hugging Face's layout and ours: "same" (identical shape), "flat"
# (Hugging Face keeps it 1-D, we split heads), or an int: the number of our leading dims that
# form Hugging Face's input dimension (its ``nn.Linear`` stores ``[out, in]``; we store
# ``[in..., out...]`` so that einsums read naturally).
Transform = int | str

# (Hugging Face tensor name, our path with "/" between keys, transform). In a layer's table the
# names are relative to ``model.layers.{i}.`` and the paths to ``layers/{i}/``.
TensorRule = tuple[str, str, Transform]


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
    """Where a family's decoder layer departs from the shared one."""

    qkv_bias: bool  # the q/k/v projections carry a bias (the output projection never does)
    qk_norm: bool  # an RMSNorm over each head's q and k, before RoPE


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # `ModelConfig.family`
    decoder: DecoderOptions
    hf_model_type: str  # config.json "model_type"
    hf_architecture: str  # config.json "architectures"
    layer_tensors: tuple[TensorRule, ...]
    # Checks what only this family's config.json holds (given the file, its head_dim and the
    # file's name): a ValueError naming the file for what this decoder cannot reproduce.
    check_hf_config: Callable[[dict[str, Any], int, str], None]
    # The config.json keys only this family writes.
    hf_config_extra: Callable[[ModelConfig], dict[str, Any]]


# The tensors outside the layers, the same for every family so far.
TOP_TENSORS: tuple[TensorRule, ...] = (
    ("model.embed_tokens.weight", "embed", "same"),
    ("model.norm.weight", "final_norm/scale", "flat"),
)
UNTIED_HEAD: TensorRule = ("lm_head.weight", "lm_head", 1)

# The layer tensors every family of this decoder holds.
SHARED_LAYER_TENSORS: tuple[TensorRule, ...] = (
    ("self_attn.q_proj.weight", "attn/q/kernel", 1),
    ("self_attn.k_proj.weight", "attn/k/kernel", 1),
    ("self_attn.v_proj.weight", "attn/v/kernel", 1),
    ("self_attn.o_proj.weight", "attn/o/kernel", 2),
    ("mlp.gate_proj.weight", "mlp/gate/kernel", 1),
    ("mlp.up_proj.weight", "mlp/up/kernel", 1),
    ("mlp.down_proj.weight", "mlp/down/kernel", 1),
    ("input_layernorm.weight", "input_norm/scale", "flat"),
    ("post_attention_layernorm.weight", "post_attn_norm/scale", "flat"),
)
