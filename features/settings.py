"""Loading the YAML defaults into frozen, typo-proof settings models."""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class FrozenSettings(BaseModel):
    """Base of every settings model: immutable, and an unknown key is an error, not a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RulesSettings(FrozenSettings):
    lookback_days: int = Field(gt=0)
    repeat_visit_min_days: int = Field(ge=2)


def load_defaults(path: Path | None = None) -> dict[str, Any]:
    """The raw defaults: the shipped ``features/config/default.yaml`` or a user's copy of it."""
    if path is None:
        return copy.deepcopy(_shipped_defaults())  # callers may edit; the cache must not change
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a YAML mapping of settings sections")
    return loaded


@cache
def _shipped_defaults() -> dict[str, Any]:
    text = resources.files("features").joinpath("config/default.yaml").read_text("utf-8")
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def load_rules_settings(path: Path | None = None) -> RulesSettings:
    return RulesSettings.model_validate(load_defaults(path)["rules"])
