"""Scenarios: one file each, one registry.

A scenario is a class registered with @register("name") that has
  Config   a pydantic model (extra keys forbidden) whose list-valued SWEEP fields are sweep axes
  run(bundle, point, ctx) -> list[Record]     one sweep point of one model
  finalize(bundle, records, ctx) -> list[Record]  optional: records derived from the whole sweep
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

_REGISTRY: dict[str, type] = {}


class ScenarioConfig(BaseModel):
    """Base for scenario configs: list fields named in SWEEP are swept as a cartesian product."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SWEEP: ClassVar[tuple[str, ...]] = ()

    def points(self) -> list[dict[str, Any]]:
        fixed = {k: v for k, v in self.model_dump().items() if k not in self.SWEEP and k != "scenario"}
        axes = [(k, getattr(self, k)) for k in self.SWEEP]
        return [{**fixed, **dict(zip([a for a, _ in axes], combo, strict=True))}
                for combo in itertools.product(*[vals for _, vals in axes])]


def register(name: str):
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str):
    from andromeda.errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"scenario '{name}' is unknown; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def names() -> list[str]:
    return list(_REGISTRY)


def configs() -> list[type[ScenarioConfig]]:
    return [cls.Config for cls in _REGISTRY.values()]


def _load() -> None:
    """Import every scenario module in this package (each registers itself); `common` is shared code."""
    import importlib
    import pkgutil

    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name != "common" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load()
