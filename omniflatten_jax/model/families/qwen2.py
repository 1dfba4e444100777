"""Qwen2: q/k/v projections with a bias, no q/k norm, ``head_dim x heads == hidden``."""

from __future__ import annotations

from omniflatten_jax.config import ModelConfig
from omniflatten_jax.model.families.family import SHARED_LAYER_TENSORS, DecoderOptions, Family


def _check_hf_config(hf: dict, head_dim: int, source: str) -> None:
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ValueError(f"{source}: head_dim {head_dim} x {hf['num_attention_heads']} heads != "
                         f"hidden_size {hf['hidden_size']}; Qwen2 ties them")


def _hf_config_extra(cfg: ModelConfig) -> dict:
    return {}


QWEN2 = Family(
    name="qwen2",
    decoder=DecoderOptions(qkv_bias=True, qk_norm=False),
    hf_model_type="qwen2",
    hf_architecture="Qwen2ForCausalLM",
    layer_tensors=SHARED_LAYER_TENSORS + (
        ("self_attn.q_proj.bias", "attn/q/bias", "flat"),
        ("self_attn.k_proj.bias", "attn/k/bias", "flat"),
        ("self_attn.v_proj.bias", "attn/v/bias", "flat"),
    ),
    check_hf_config=_check_hf_config,
    hf_config_extra=_hf_config_extra,
)
