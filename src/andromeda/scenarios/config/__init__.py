"""Scenario configs: one torch-free module per scenario; the run code (torch) is scenarios/<name>.py.

A manifest is validated with these alone, so `andromeda run` refuses a bad manifest before torch is
imported and `andromeda report` reads a run's manifest.yml where torch is not installed.

A config is a strict pydantic model (unknown keys, coercions and non-finite floats refused; every
number bounded, see schema/fields.py) registered with @register_config. Its list-valued SWEEP fields
are sweep axes (a cartesian product); `check` holds whole-entry rules (a combination that would fail
every case at run time is refused here); `check_resources` checks the files and models it names.
"""

from __future__ import annotations

import importlib
import itertools
import math
import pkgutil
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator

from andromeda.schema.fields import STRICT, StrictModel, show

RANKS_MAX = 65_536

CacheKind = Literal["full", "int8", "int4"]  # decoding.CACHE_KINDS
DType = Literal["float32", "bfloat16", "float16"]



def _check_ranks(v: Any) -> Any:
    if not isinstance(v, list) or not v:
        raise ValueError("a non-empty list of process counts (positive integers) or 'all'")
    for i, x in enumerate(v):
        if x != "all" and (isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= RANKS_MAX):
            raise ValueError(f"[{i}] must be a positive integer or 'all', got {show(x)}; at most {RANKS_MAX}")
    return v


# A sweep over the number of processes a case runs on; "all" = the launcher's nproc x nodes.
Ranks = Annotated[list[int | Literal["all"]], BeforeValidator(_check_ranks)]

_CONFIGS: dict[str, type[ScenarioConfig]] = {}


class ScenarioConfig(StrictModel):
    """Base for scenario configs: list fields named in SWEEP are swept as a cartesian product."""

    model_config = STRICT
    SWEEP: ClassVar[tuple[str, ...]] = ()
    NEEDS_LAUNCHER: ClassVar[bool] = False  # runs across processes: the manifest needs a launcher

    def points(self) -> list[dict[str, Any]]:
        fixed = {k: v for k, v in self.model_dump().items() if k not in self.SWEEP and k != "scenario"}
        axes = [(k, getattr(self, k)) for k in self.SWEEP]
        return [{**fixed, **dict(zip([a for a, _ in axes], combo, strict=True))}
                for combo in itertools.product(*[vals for _, vals in axes])]

    def n_points(self) -> int:
        """len(points()), without building them."""
        return math.prod(len(getattr(self, k)) for k in self.SWEEP)

    def check_resources(self) -> None:
        """Files, directories and model sources this entry names: raise ValueError('field: why') when one
        is missing or of the wrong kind. Run at load time for a run, not when a finished run is read."""


def register_config(cls: type[ScenarioConfig]) -> type[ScenarioConfig]:
    _CONFIGS[cls.model_fields["scenario"].default] = cls
    return cls


def names() -> list[str]:
    return list(_CONFIGS)


def configs() -> list[type[ScenarioConfig]]:
    return list(_CONFIGS.values())


def get_config(name: str) -> type[ScenarioConfig] | None:
    return _CONFIGS.get(name)


def _load() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load()

__all__ = ["ScenarioConfig", "register_config", "names", "configs", "get_config", "CacheKind", "DType", "Ranks"]
