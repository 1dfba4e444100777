"""Small configurations shared by the data and training tests."""

import dataclasses
import os
import subprocess
import sys

from omniflatten_jax.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    SpeechConfig,
    TrainConfig,
)
from omniflatten_jax.config.token_layout import TokenLayout

SMALL_MODEL = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, rope_theta=10_000.0)


def small_config(source: str, **train) -> ExperimentConfig:
    return ExperimentConfig(
        name="test", model=SMALL_MODEL, layout=TokenLayout("bytes", 256, 32),
        speech=SpeechConfig(fit_max_utterances=64),
        data=DataConfig(source=source, num_workers=0, num_packing_bins=4),
        train=dataclasses.replace(TrainConfig(steps=4, batch_size=4, seq_len=128, log_every=1,
                                              checkpoint_every=2), **train),
        optimizer=OptimizerConfig(peak_lr=3e-3, warmup_steps=2),
        mesh=MeshConfig(),  # all devices on the fsdp axis
        eval=EvalConfig(max_examples=4, tts_max_examples=2, batch_size=4))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(name: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command of the commands room run as a user runs it: ``python experiments/NAME.py``
    from the repository root."""
    return subprocess.run([sys.executable, os.path.join("experiments", f"{name}.py"),
                           *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def command_error(name: str, args) -> str:
    """Runs a command expecting a failure: exit status 1 and one line on stderr."""
    result = run_command(name, *args)
    err = result.stderr
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def command_ok(name: str, args) -> str:
    result = run_command(name, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
