"""collectives: all-reduce / all-gather bus bandwidth across processes (run code: scenarios/collectives.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from andromeda.scenarios.config import DType, Ranks, ScenarioConfig, register_config
from andromeda.schema.fields import Float, NonEmpty, Runs, Warmup

Op = Literal["all_reduce", "all_gather"]
SIZE_MIB_MAX = 262_144.0  # 256 GiB: more than any one device holds


@register_config
class CollectivesConfig(ScenarioConfig):
    SWEEP = ("ranks",)
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["collectives"] = Field("collectives", description=(
        "The scenario: collectives (all-reduce / all-gather alone: algorithm and bus bandwidth as nccl-"
        "tests defines them)."))
    ranks: Ranks = Field(["all"], description=(
        "Process counts to run at (swept), or all (the launcher's nproc x nodes)."))
    ops: NonEmpty(Op) = Field(["all_reduce", "all_gather"], description=(
        "Collectives to time: all_reduce, all_gather."))
    sizes_mib: NonEmpty(Float(0.0, SIZE_MIB_MAX, lo_open=True)) = Field([1.0, 16.0, 64.0, 256.0], description=(
        "Message sizes in MiB."))
    dtype: DType = Field("float32", description="Element dtype of the messages.")
    warmup: Warmup = Field(5, description="Untimed calls before timing.")
    iters: Runs = Field(20, description="Timed calls per size.")


__all__ = ["CollectivesConfig", "Op"]
