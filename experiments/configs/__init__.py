"""Named configurations: ``--config=NAME`` picks `NAMES[NAME]()`."""

from __future__ import annotations

from collections.abc import Sequence

from experiments.configs import embedded, qwen2_0_5b, qwen2_1_5b, qwen2_7b, qwen3_0_6b
from omniflatten_jax.config import ConfigError, ExperimentConfig, override

NAMES = {"embedded": embedded.config, "qwen2_0_5b": qwen2_0_5b.config,
         "qwen2_0_5b_shrunk": qwen2_0_5b.shrunk, "qwen2_1_5b": qwen2_1_5b.config,
         "qwen2_7b": qwen2_7b.config, "qwen3_0_6b": qwen3_0_6b.config}


def get_config(name: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The named configuration with ``section.field=value`` overrides applied in order."""
    if name not in NAMES:
        raise ConfigError(f"unknown config {name!r}; choose one of {sorted(NAMES)}")
    cfg = NAMES[name]()
    for assignment in overrides:
        cfg = override(cfg, assignment)
    return cfg
