"""The embedded CPU default: the tiny preset on the synthesised chatterbot corpus.

Sized so that `python experiments/run.py --stage=alignment` finishes on a 2-core CPU in under
ten minutes, data synthesis included.
"""

from omniflatten_jax.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    OptimizerConfig,
    TrainConfig,
    preset,
)


def config() -> ExperimentConfig:
    tiny = preset("tiny")
    return ExperimentConfig(
        name="embedded",
        model=tiny.model,
        layout=tiny.layout,
        data=DataConfig(source="embedded", max_text_chars=100, num_workers=1),
        train=TrainConfig(steps=850, batch_size=8, seq_len=256, log_every=25,
                          checkpoint_every=100, keep_checkpoints=2),
        optimizer=OptimizerConfig(peak_lr=2e-3, warmup_steps=50, end_lr_ratio=0.05),
        eval=EvalConfig(max_examples=100, tts_max_examples=32, batch_size=16),
    )
