"""Configuration: frozen dataclasses, the one source of truth for shapes and choices.

Owns every setting of a run (`experiment`: the sections and ``--set`` overrides; `model`: the
model's section and presets; `decoding`: how duplex stages decode; `token_layout`: the id space
of text, speech and special tokens; `stages`: the stage names and curricula; `serving`: the
live server; `rules`: the dict round trip and validation that names the setting). Imports
nothing else of the library: every other package may import it. The names below are the
sections, found in one place.
"""

from omniflatten_jax.config.decoding import SPEAK_RULES, DecodingPolicy
from omniflatten_jax.config.experiment import (
    PARAM_PLACEMENTS,
    DataConfig,
    DialogueConfig,
    EvalConfig,
    ExperimentConfig,
    FlattenConfig,
    MelConfig,
    MeshConfig,
    OptimizerConfig,
    ParamPlacement,
    SimulationConfig,
    SpeechConfig,
    TrainConfig,
    override,
)
from omniflatten_jax.config.model import (
    ATTENTION_IMPLS,
    PRESETS,
    QWEN_LOSS_CHUNK,
    REMAT_POLICIES,
    ModelConfig,
    Preset,
    preset,
)
from omniflatten_jax.config.rules import ConfigError, from_dict, to_dict
from omniflatten_jax.config.serving import ServeConfig
from omniflatten_jax.config.token_layout import TokenLayout

__all__ = [
    "ATTENTION_IMPLS", "PARAM_PLACEMENTS", "PRESETS", "QWEN_LOSS_CHUNK", "REMAT_POLICIES",
    "SPEAK_RULES", "ConfigError", "DataConfig", "DecodingPolicy", "DialogueConfig",
    "EvalConfig", "ExperimentConfig", "FlattenConfig", "MelConfig", "MeshConfig",
    "ModelConfig", "OptimizerConfig", "ParamPlacement", "Preset", "ServeConfig",
    "SimulationConfig", "SpeechConfig", "TokenLayout", "TrainConfig", "from_dict", "override",
    "preset", "to_dict",
]
