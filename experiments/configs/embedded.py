"""The embedded CPU default: the tiny preset on the synthesised chatterbot corpus.

Sized so that on a 2-core CPU `python experiments/run.py --stage=alignment` finishes in under
ten minutes and `--stage=all` in under 25, data synthesis included.
"""

from omniflatten_jax.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    FlattenConfig,
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
        # UTF-8 bytes run at ~15 per second of speech: 8 text slots per 0.4 s chunk keep a
        # turn's text ahead of its speech (the Qwen presets keep the paper's 2 BPE tokens).
        flatten=FlattenConfig(text_chunk=8),
        dialogue_train=TrainConfig(steps=300, batch_size=4, seq_len=512, log_every=25,
                                   checkpoint_every=100, keep_checkpoints=2),
    )
