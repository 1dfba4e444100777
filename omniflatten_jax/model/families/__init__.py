"""Model families: each decoder architecture the library builds, and its Hugging Face format.

`ModelConfig.family` names one, and every checkpoint records it. A family is data
(`family.Family`): the options of the shared decoder it uses and its Hugging Face config and
tensor names. Adding one (Llama, say) is a module here and a line in `FAMILIES`; the model,
the checkpoints and the exports read it through `get` and `for_hf_model_type`.

May import: `config` only (a family is data).
"""

from __future__ import annotations

from omniflatten_jax.config.rules import ConfigError
from omniflatten_jax.model.families.family import DecoderOptions, Family
from omniflatten_jax.model.families.qwen2 import QWEN2
from omniflatten_jax.model.families.qwen3 import QWEN3

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN2, QWEN3)}


def get(name: str) -> Family:
    """The family `ModelConfig.family` names; an unknown name is a ConfigError naming the
    choices."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model.family={name!r} is not a model family; choose one of "
                          f"{', '.join(sorted(FAMILIES))}") from None


def for_hf_model_type(model_type: str | None, source: str) -> Family:
    """The family whose Hugging Face config.json says `model_type`."""
    for family in FAMILIES.values():
        if family.hf_model_type == model_type:
            return family
    supported = ", ".join(repr(f.hf_model_type) for f in FAMILIES.values())
    raise ValueError(f"{source}: model_type is {model_type!r}; supported: {supported}")


__all__ = ["DecoderOptions", "FAMILIES", "Family", "for_hf_model_type", "get"]
