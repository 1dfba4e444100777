"""Qwen3-0.6B with the paper's settings, sized like `qwen2_0_5b`: the second model family.

Its 8 KV heads allow tensor parallelism up to 8; the global batches and the mesh are
`qwen2_0_5b`'s (``python experiments/plan.py --config=qwen3_0_6b --topology=v5p-64`` prints
the memory per chip). Start from real weights with ``--init_from`` (Qwen/Qwen3-0.6B imported
by ``experiments/from_hf.py``).
"""

import dataclasses

from experiments.configs import qwen2_0_5b
from omniflatten_jax.config import ExperimentConfig, preset


def config() -> ExperimentConfig:
    """`qwen2_0_5b`'s training settings with this model (one source for the Qwen presets)."""
    base, qwen = qwen2_0_5b.config(), preset("qwen3_0_6b")
    return dataclasses.replace(
        base, name="qwen3_0_6b", model=dataclasses.replace(qwen.model, remat="full"),
        layout=qwen.layout)
