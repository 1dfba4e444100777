"""What every configuration shares: the dict round trip and validation that names the setting."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Builds a config from a dict, rejecting unknown keys by name (a typo is an error)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


def require(ok: bool, field: str, value: Any, rule: str) -> None:
    """Validation at parse time: a bad value is an error naming the field, never a late crash
    (``override`` adds the section, as in ``train.steps``)."""
    if not ok:
        raise ConfigError(f"{field} must be {rule}, got {value!r}")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)
