"""The model's configuration: a decoder's family, architecture and numerics, and the presets."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from omniflatten_jax.config.rules import ConfigError
from omniflatten_jax.config.rules import require as _require
from omniflatten_jax.config.token_layout import TokenLayout

AttentionImpl = Literal["auto", "xla", "cudnn", "splash", "pallas_gpu"]
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "pallas_gpu")
# What a rematerialised decoder layer keeps for the backward pass (`model.layer_stack`).
RematPolicy = Literal["none", "minimal", "save_matmuls", "full"]
REMAT_POLICIES = ("none", "minimal", "save_matmuls", "full")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder's architecture and numerics (the vocabulary size comes from TokenLayout).

    `family` names the model family (`model.families`: "qwen2", "qwen3"): how its layers differ
    from the shared decoder and how its Hugging Face folders read and write. Every checkpoint
    records it; one written before families existed holds no family and is a Qwen2.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    family: str = "qwen2"
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_position_embeddings: int = 32_768
    # fp32 master weights; activations and matmuls in `dtype` (bfloat16 on accelerators).
    param_dtype: str = "float32"
    dtype: str = "float32"
    # Attention over packed rows (`model.packed_attention`). "auto": Pallas splash on TPU, the
    # Pallas GPU kernel (packed rows) or cuDNN (unpacked) on GPU in 16 bits, XLA otherwise.
    attention_impl: AttentionImpl = "auto"
    # What each decoder layer saves for the backward pass; the rest is recomputed:
    # "none" (no recomputation, most memory), "minimal" (every matmul output, XLA attention's
    # included), "save_matmuls" (the weight matmuls' outputs), "full" (only the layer's input).
    # A Pallas attention kernel (splash, pallas_gpu) is recomputed under every policy but none.
    # Old configs' true / false read as "full" / "none".
    remat: RematPolicy = "none"
    # Run the decoder layers as one `lax.scan` (compile time independent of depth) instead of
    # a Python loop; the parameter tree and checkpoints are the same either way.
    scan_layers: bool = True
    # Training loss over chunks of this many positions, never the full [B, T, vocab] logits
    # (`training.loss.chunked_token_losses`); 0 = the full logits.
    loss_chunk: int = 0

    ARCHITECTURE = ("family", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_embeddings")

    def architecture(self) -> dict[str, Any]:
        """The fields that weights depend on (not dtypes, remat or the attention backend)."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        _require(self.loss_chunk >= 0, "loss_chunk", self.loss_chunk, ">= 0 (0 = full logits)")
        if isinstance(self.remat, bool) or str(self.remat).lower() in ("true", "false"):
            # written before policies: remat was on or off, and on meant the whole layer
            on = self.remat is True or str(self.remat).lower() == "true"
            object.__setattr__(self, "remat", "full" if on else "none")
        _require(self.remat in REMAT_POLICIES, "remat", self.remat,
                 f"one of {', '.join(REMAT_POLICIES)}")
        _require(self.attention_impl in ATTENTION_IMPLS, "attention_impl", self.attention_impl,
                 f"one of {', '.join(ATTENTION_IMPLS)}")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model architecture together with the token layout it is trained with."""

    model: ModelConfig
    layout: TokenLayout


# The Qwen presets' loss chunk: 156k-entry fp32 logits of 128 positions per row. On v5p-64 at
# 8 x 1024 tokens per chip the 0.5B step's temporaries are 1.84 GiB with 128, 3.03 with 256
# and 13.34 with the full logits (docs/benchmarks.md).
QWEN_LOSS_CHUNK = 128


def _qwen(family, hidden, mlp, layers, heads, kv_heads, tied, text_vocab, *, head_dim=None,
          max_positions=32_768) -> Preset:
    """A released Qwen checkpoint's shape. Qwen3 keeps Qwen2's BPE vocabulary (its extra
    special tokens sit in the rows above the tokenizer's), so both read text as "qwen2"."""
    return Preset(
        ModelConfig(hidden_size=hidden, intermediate_size=mlp, num_layers=layers,
                    num_heads=heads, num_kv_heads=kv_heads,
                    head_dim=head_dim or hidden // heads, family=family, tie_embeddings=tied,
                    max_position_embeddings=max_positions, dtype="bfloat16",
                    loss_chunk=QWEN_LOSS_CHUNK),
        TokenLayout(text_tokenizer="qwen2", text_vocab_size=text_vocab, num_speech_codes=4096),
    )


PRESETS: dict[str, Preset] = {
    # About 3.3M parameters: trains on a laptop CPU in minutes. Text is UTF-8 bytes. Its 4
    # layers run as a loop: on CPU the scan's stacked weights cost more than they save (the
    # embedded step: 139 ms looped, 201 ms scanned, docs/benchmarks.md).
    "tiny": Preset(
        ModelConfig(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                    num_kv_heads=2, head_dim=64, rope_theta=10_000.0, max_position_embeddings=4096,
                    scan_layers=False),
        TokenLayout(text_tokenizer="bytes", text_vocab_size=256, num_speech_codes=256),
    ),
    # Hugging Face shapes of Qwen/Qwen2-0.5B, -1.5B and -7B, and Qwen/Qwen3-0.6B (whose
    # head_dim, 128, is not hidden / heads).
    "qwen2_0_5b": _qwen("qwen2", 896, 4864, 24, 14, 2, True, 151_936),
    "qwen2_1_5b": _qwen("qwen2", 1536, 8960, 28, 12, 2, True, 151_936),
    "qwen2_7b": _qwen("qwen2", 3584, 18944, 28, 28, 4, False, 152_064),
    "qwen3_0_6b": _qwen("qwen3", 1024, 3072, 28, 16, 8, True, 151_936, head_dim=128,
                        max_positions=40_960),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
