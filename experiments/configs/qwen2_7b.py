"""Qwen2-7B with the paper's settings (OMNIFLATTEN.md), sized like `qwen2_0_5b`.

Max length 1024 for alignment and 8192 for the dialogue stages, 4,096 speech codes, AdamW
(0.9, 0.95), weight decay 0.1, peak LR 2e-5 with warm-up then cosine, bf16 compute over fp32
master weights, layer remat, data + FSDP parallelism.

Pods: a v5p-64 (32 chips) and 4 nodes x 8 80 GB GPUs (32 GPUs). The global batches (256 rows
of 1024 tokens: 8 per chip; 32 rows of 8192: 1 per chip) divide over the 32 data-parallel
devices of each. No tensor parallelism: FSDP alone leaves 0.9 GiB of parameters and 1.8 GiB
of Adam moments per chip on 32 chips; the alignment step needs 40.5 GiB per v5p chip in all,
a dialogue step (one row of 8192) 53.1 GiB (``python experiments/plan.py --config=qwen2_7b
--topology=v5p-64``, docs/benchmarks.md). A 32 GiB v6e chip fits 4 rows of 1024, not 8: on a
v6e pod, set batches (--set) that fit and divide. Start from real weights with ``--init_from``.
"""

import dataclasses

from omniflatten_jax.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    MeshConfig,
    OptimizerConfig,
    TrainConfig,
    preset,
)


def config() -> ExperimentConfig:
    qwen = preset("qwen2_7b")
    return ExperimentConfig(
        name="qwen2_7b",
        model=dataclasses.replace(qwen.model, remat=True),
        layout=qwen.layout,
        data=DataConfig(max_text_chars=400, num_workers=4, num_packing_bins=32),
        train=TrainConfig(steps=20_000, batch_size=256, seq_len=1024, log_every=50,
                          checkpoint_every=1000, keep_checkpoints=3),
        optimizer=OptimizerConfig(peak_lr=2e-5, warmup_steps=1000, end_lr_ratio=0.1),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        eval=EvalConfig(max_examples=500, tts_max_examples=100, batch_size=32),
        dialogue_train=TrainConfig(steps=10_000, batch_size=32, seq_len=8192, log_every=50,
                                   checkpoint_every=1000, keep_checkpoints=3),
    )
