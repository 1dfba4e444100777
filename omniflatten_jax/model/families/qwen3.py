"""Qwen3: an RMSNorm over each head's q and k before RoPE, no q/k/v bias, and a `head_dim` of
its own (Qwen3-0.6B: 16 heads of 128 over a hidden size of 1024)."""

from __future__ import annotations

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.model.families.family import SHARED_LAYER_TENSORS, DecoderOptions, Family


def _check_hf_config(hf: dict, head_dim: int, source: str) -> None:
    if "head_dim" not in hf:
        raise ValueError(f"{source}: a Qwen3 config states its head_dim (transformers assumes "
                         "128 where it is missing); add it")
    if hf.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias=true is not supported (no released Qwen3 "
                         "uses it)")


def _hf_config_extra(cfg: ModelConfig) -> dict:
    return {"attention_bias": False, "layer_types": ["full_attention"] * cfg.num_layers}


QWEN3 = Family(
    name="qwen3",
    decoder=DecoderOptions(qkv_bias=False, qk_norm=True),
    hf_model_type="qwen3",
    hf_architecture="Qwen3ForCausalLM",
    layer_tensors=SHARED_LAYER_TENSORS + (
        ("self_attn.q_norm.weight", "attn/q_norm/scale", "same"),
        ("self_attn.k_norm.weight", "attn/k_norm/scale", "same"),
    ),
    check_hf_config=_check_hf_config,
    hf_config_extra=_hf_config_extra,
)
