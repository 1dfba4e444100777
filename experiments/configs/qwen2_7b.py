"""Qwen2-7B with the paper's settings (arXiv 2410.17799), sized like `qwen2_0_5b`.

Max length 1024 for alignment and 8192 for the dialogue stages, 4,096 speech codes, AdamW
(0.9, 0.95), weight decay 0.1, peak LR 2e-5 with warm-up then cosine, bf16 compute over fp32
master weights, layer remat, data + FSDP parallelism.

Pods: a v5p-64 (32 chips) and 4 nodes x 8 80 GB GPUs (32 GPUs). The global batches (256 rows
of 1024 tokens: 8 per chip; 32 rows of 8192: 1 per chip) divide over the 32 data-parallel
devices of each. No tensor parallelism: FSDP alone leaves 0.9 GiB of parameters and 1.8 GiB
of Adam moments per chip on 32 chips; the alignment step needs 9.6 GiB per v5p chip in all,
a dialogue step (one row of 8192) 9.5 GiB, and a v6e-16 fits 32 rows of 1024 per chip
(``python experiments/plan.py --config=qwen2_7b --topology=v5p-64``, docs/benchmarks.md).
Start from real weights with ``--init_from``.
"""

import dataclasses

from experiments.configs import qwen2_0_5b
from omniflatten_jax.config import ExperimentConfig, preset


def config() -> ExperimentConfig:
    """`qwen2_0_5b`'s training settings with this model (one source for the Qwen presets)."""
    base, qwen = qwen2_0_5b.config(), preset("qwen2_7b")
    return dataclasses.replace(
        base, name="qwen2_7b", model=dataclasses.replace(qwen.model, remat="full"),
        layout=qwen.layout,
        # 8 rows of 1024 tokens per chip of a v5p-64
        train=dataclasses.replace(base.train, batch_size=256))
