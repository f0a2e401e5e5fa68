"""collectives: all-reduce / all-gather bus bandwidth across processes (run code: scenarios/collectives.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from andromeda.bench.fields import Float, NonEmpty, Runs, Warmup
from andromeda.bench.scenarios.config import DType, Ranks, ScenarioConfig, register_config

Op = Literal["all_reduce", "all_gather"]
SIZE_MIB_MAX = 262_144.0  # 256 GiB: more than any one device holds


@register_config
class CollectivesConfig(ScenarioConfig):
    SWEEP = ("ranks",)
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["collectives"] = "collectives"
    ranks: Ranks = ["all"]
    ops: NonEmpty(Op) = ["all_reduce", "all_gather"]
    sizes_mib: NonEmpty(Float(0.0, SIZE_MIB_MAX, lo_open=True)) = [1.0, 16.0, 64.0, 256.0]
    dtype: DType = "float32"
    warmup: Warmup = 5
    iters: Runs = 20


__all__ = ["CollectivesConfig", "Op"]
