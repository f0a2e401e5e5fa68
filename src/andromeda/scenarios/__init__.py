"""Scenarios: one run module each (torch), one torch-free config module each (config/), one registry.

A scenario is a class registered with @register("name") in scenarios/<name>.py (or a folder
scenarios/<name>/ with its private helpers, as attention/) that has
  Config   its config class, from scenarios/config/<name>.py (list-valued SWEEP fields are sweep axes)
  run(bundle, point, ctx) -> list[Record]     one sweep point of one model
  finalize(bundle, records, ctx) -> list[Record]  optional: records derived from the whole sweep

names() and configs() read the configs alone, so a manifest validates without importing torch; get()
imports the run module the first time a scenario is run. Helpers several scenarios share: common.py (random
inputs, FLOP metrics), decoding.py (token-by-token decoding of any model kind), multiprocess.py (the scenarios
that run across processes).
"""

from __future__ import annotations

import importlib
import pkgutil

from andromeda.scenarios.config import ScenarioConfig, configs, names  # noqa: F401 - the registry's API

_REGISTRY: dict[str, type] = {}
_NOT_SCENARIOS = ("common", "config", "decoding", "multiprocess")  # helpers the scenarios share


def register(name: str):
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str):
    from andromeda.errors import ConfigError

    if name not in names():
        raise ConfigError(f"scenario '{name}' is unknown; available: {', '.join(names())}")
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{name}")  # scenarios/<name>.py registers it
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
        if name not in _REGISTRY:
            load_all()
    return _REGISTRY[name]()


def load_all() -> dict[str, type]:
    """Import every run module (each registers itself): name -> scenario class."""
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _NOT_SCENARIOS and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    return dict(_REGISTRY)


__all__ = ["ScenarioConfig", "register", "get", "names", "configs", "load_all"]
