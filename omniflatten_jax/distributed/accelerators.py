"""What each accelerator chip offers: memory and peak bf16 matmul throughput, and the model's
training FLOP count that those peaks are measured against.

`experiments/plan.py` reads the memory to say whether a step fits before launch; the peak
FLOP/s and `train_flops_per_token` are the two halves of model FLOP utilisation (MFU).

Keys are JAX ``device_kind`` strings (compile-only TPU devices report the same ones as real
chips). TPU memory is what the compiler lets a program use (the "available HBM" of its
RESOURCE_EXHAUSTED errors, libtpu 0.0.42), slightly under the marketed size; GPU memory is
the card's total (XLA keeps part of it). Peaks are dense bf16 (no sparsity) per device: a v5p
or v4 chip is one megacore device.
"""

from __future__ import annotations

import dataclasses

MiB = 1 << 20
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the product name (``v5p``)
    hbm_bytes: int  # memory one program may use
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip (per device)


CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", int(30.75 * GiB), 275e12),
    "TPU v5": Chip("v5p", int(95.74 * GiB), 459e12),
    "TPU v5 lite": Chip("v5e", int(15.75 * GiB), 197e12),
    "TPU v6 lite": Chip("v6e", int(31.25 * GiB), 918e12),
    # device_kind and memory.total as jax 0.11.2 and nvidia-smi report them (2026-11-28)
    "NVIDIA H100 80GB HBM3": Chip("h100-sxm", 81_559 * MiB, 989e12),
    "NVIDIA H200": Chip("h200", 143_771 * MiB, 989e12),
}


def chip(device_kind: str) -> Chip:
    """The chip of a ``jax.Device.device_kind``; an unknown kind is an error naming the known."""
    try:
        return CHIPS[device_kind]
    except KeyError:
        raise ValueError(f"no memory/FLOP figures for device kind {device_kind!r}; known: "
                         f"{sorted(CHIPS)} (add it to "
                         "omniflatten_jax/distributed/accelerators.py)") from None


def peak_flops(device_kind: str) -> float:
    """Dense bf16 FLOP/s of one device of `device_kind`."""
    return chip(device_kind).peak_bf16_flops


def matmul_params(num_params: int, vocab_size: int, hidden_size: int, tied: bool) -> int:
    """Parameters that multiply activations: all of them less an untied input embedding table
    (a lookup, not a matmul); a tied table counts once, as the output projection."""
    return num_params - (0 if tied else vocab_size * hidden_size)


def train_flops_per_token(num_params: int, vocab_size: int, model_cfg, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward, no remat recomputation):

        6 * N_matmul  +  6 * num_layers * seq_len * num_heads * head_dim

    The first term is the weight matmuls (2 forward, 4 backward per parameter). The second is
    attention scores and values: 4 * T * heads * head_dim per token and layer forward, times 3
    for the backward, halved because causal attention (packed rows included) uses half the
    T x T scores. Recomputed layers under remat are not counted, as MFU conventionally does not.
    """
    n = matmul_params(num_params, vocab_size, model_cfg.hidden_size, model_cfg.tie_embeddings)
    attention = 6 * model_cfg.num_layers * seq_len * model_cfg.num_heads * model_cfg.head_dim
    return float(6 * n + attention)


def utilisation(tokens_per_s: float, flops_per_token: float, device_kind: str,
                num_devices: int) -> dict[str, float]:
    """What the training logs report: tokens/s per chip and, on a chip in `CHIPS`, model FLOP
    utilisation (the model FLOPs of the tokens trained, over the devices' peak). Tokens are
    those of real examples, not padding: compute spent on padding is not useful work."""
    out = {"tokens_per_s_per_chip": tokens_per_s / num_devices}
    if device_kind in CHIPS:
        out["mfu"] = tokens_per_s * flops_per_token / (peak_flops(device_kind) * num_devices)
    return out
