"""load_balance: per-rank step times and stragglers across processes (run code: scenarios/load_balance.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from andromeda.bench.fields import Batch, NonNegFloat, Runs, Tokens, Warmup
from andromeda.bench.scenarios.config import Ranks, ScenarioConfig, register_config


@register_config
class LoadBalanceConfig(ScenarioConfig):
    SWEEP = ("ranks",)
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["load_balance"] = "load_balance"
    ranks: Ranks = ["all"]
    mode: Literal["forward", "fwd_bwd"] = "fwd_bwd"
    batch: Batch = 4  # sequences per rank
    seq_len: Tokens = 128
    warmup: Warmup = 2
    iters: Runs = 10
    straggler_threshold: NonNegFloat = 0.1


__all__ = ["LoadBalanceConfig"]
