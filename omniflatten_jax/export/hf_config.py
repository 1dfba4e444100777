"""Hugging Face `config.json` <-> `ModelConfig` (transformers 4.x and 5.x forms), for every
model family: the shared fields here, what only one family has in its `Family`."""

from __future__ import annotations

from typing import Any

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model import families


def model_config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """Reads a config of a known family; anything this model cannot reproduce is an error
    naming `source`."""
    family = families.for_hf_model_type(hf.get("model_type"), source)
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    # transformers 5 writes rope_theta inside rope_parameters; 4.x at the top level.
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ValueError(f"{source}: only default RoPE is supported, got rope scaling "
                         f"{rope or hf.get('rope_scaling')}")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    family.check_hf_config(hf, head_dim, source)
    return ModelConfig(
        family=family.name, hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads), head_dim=head_dim,
        rope_theta=float(theta), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 32_768))


def model_config_to_hf(cfg: ModelConfig, layout: TokenLayout, dtype: str) -> dict[str, Any]:
    """A config that transformers 4.x and 5.x both read as this model (vocab: the used ids)."""
    family = families.get(cfg.family)
    return {
        "architectures": [family.hf_architecture],
        "model_type": family.hf_model_type,
        "vocab_size": layout.used_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.num_layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        "pad_token_id": layout.special("<pad>"),
        **family.hf_config_extra(cfg),
    }
