"""Qwen2-1.5B with the paper's settings (arXiv 2410.17799), sized like `qwen2_0_5b`.

Max length 1024 for alignment and 8192 for the dialogue stages, 4,096 speech codes, AdamW
(0.9, 0.95), weight decay 0.1, peak LR 2e-5 with warm-up then cosine, bf16 compute over fp32
master weights, layer remat, data + FSDP parallelism (no tensor parallelism: 2 KV heads).

Pods: a v5p-64 (32 chips), a v6e-32 (32 chips) and 4 nodes x 8 GPUs
(32 GPUs); the global batches (64 rows of 1024 tokens, 32 rows of 8192) divide over the
data-parallel devices of each (``python experiments/plan.py --config=qwen2_1_5b
--topology=v5p-64`` prints the memory per chip). Start from real weights with
``--init_from``.
"""

import dataclasses

from experiments.configs import qwen2_0_5b
from omniflatten_jax.config import ExperimentConfig, preset


def config() -> ExperimentConfig:
    """`qwen2_0_5b`'s training settings with this model (one source for the Qwen presets)."""
    base, qwen = qwen2_0_5b.config(), preset("qwen2_1_5b")
    return dataclasses.replace(
        base, name="qwen2_1_5b", model=dataclasses.replace(qwen.model, remat="full"),
        layout=qwen.layout,)
