"""load_balance: per-rank step times and stragglers across processes (run code: scenarios/load_balance.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from andromeda.scenarios.config import Ranks, ScenarioConfig, register_config
from andromeda.schema.fields import Batch, NonNegFloat, Runs, Tokens, Warmup


@register_config
class LoadBalanceConfig(ScenarioConfig):
    SWEEP = ("ranks",)
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["load_balance"] = Field("load_balance", description=(
        "The scenario: load_balance (each rank's compute alone: spread and stragglers)."))
    ranks: Ranks = Field(["all"], description=(
        "Process counts to run at (swept), or all (the launcher's nproc x nodes)."))
    mode: Literal["forward", "fwd_bwd"] = Field("fwd_bwd", description="What each rank times: forward or fwd_bwd.")
    batch: Batch = Field(4, description="Sequences per rank.")
    seq_len: Tokens = Field(128, description="Tokens per sequence.")
    warmup: Warmup = Field(2, description="Untimed calls per rank.")
    iters: Runs = Field(10, description="Timed calls per rank.")
    straggler_threshold: NonNegFloat = Field(0.1, description=(
        "A rank whose median time is this fraction above the others' median is a straggler (0.1 = 10%)."))


__all__ = ["LoadBalanceConfig"]
