"""Qwen2-0.5B with the paper's alignment settings (arXiv 2410.17799).

Max length 1024, 4,096 speech codes, AdamW (0.9, 0.95), weight decay 0.1, peak LR 2e-5 with
warm-up then cosine, bf16 compute over fp32 master weights, data + FSDP parallelism. Start it
from real weights with ``--init_from`` (a checkpoint written by `export.from_hf`).

Pods: a v5p-64 (32 chips), a v6e-32 (32 chips) and 4 nodes x 8 GPUs
(32 GPUs); the global batches (64 rows of 1024 tokens, 32 rows of 8192) divide over the
data-parallel devices of each (``python experiments/plan.py --config=qwen2_0_5b
--topology=v5p-64`` prints the memory per chip).
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
from omniflatten_jax.config.token_layout import TokenLayout


def config() -> ExperimentConfig:
    qwen = preset("qwen2_0_5b")
    return ExperimentConfig(
        name="qwen2_0_5b",
        model=dataclasses.replace(qwen.model, remat="full"),
        layout=qwen.layout,
        data=DataConfig(max_text_chars=400, num_workers=4, num_packing_bins=32),
        train=TrainConfig(steps=20_000, batch_size=64, seq_len=1024, log_every=50,
                          checkpoint_every=1000, keep_checkpoints=3),
        optimizer=OptimizerConfig(peak_lr=2e-5, warmup_steps=1000, end_lr_ratio=0.1),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        eval=EvalConfig(max_examples=500, tts_max_examples=100, batch_size=32),
        # The dialogue stages: max length 8192 as in the paper's half-duplex stage.
        dialogue_train=TrainConfig(steps=10_000, batch_size=32, seq_len=8192, log_every=50,
                                   checkpoint_every=1000, keep_checkpoints=3),
    )


def shrunk() -> ExperimentConfig:
    """The qwen2_0_5b configuration with every size cut down: for tests on fake devices.

    Same layout rules, optimiser, dtype, remat and mesh axes; tiny widths and a small layout.
    """
    cfg = config()
    model = dataclasses.replace(cfg.model, hidden_size=64, intermediate_size=128, num_layers=2,
                                num_heads=4, num_kv_heads=2, head_dim=16)
    return dataclasses.replace(
        cfg, name="qwen2_0_5b_shrunk", model=model,
        layout=TokenLayout("bytes", 256, 64),
        train=dataclasses.replace(cfg.train, steps=2, batch_size=8, seq_len=128, log_every=1,
                                  checkpoint_every=1),
        dialogue_train=dataclasses.replace(cfg.dialogue_train, steps=2, batch_size=8,
                                           seq_len=256, log_every=1, checkpoint_every=1))

