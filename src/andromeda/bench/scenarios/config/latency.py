"""latency: forward, inference, backward, forward+backward and end-to-end time of one batch (run code:
scenarios/latency.py)."""

from __future__ import annotations

from typing import Literal

from andromeda.bench.fields import Batch, NonEmpty, Tokens
from andromeda.bench.scenarios.config import ScenarioConfig, register_config

Mode = Literal["forward", "inference", "backward", "fwd_bwd", "e2e"]


@register_config
class LatencyConfig(ScenarioConfig):
    SWEEP = ("mode", "batch", "seq_len")
    scenario: Literal["latency"] = "latency"
    mode: NonEmpty(Mode) = ["forward"]
    batch: NonEmpty(Batch) = [1]
    seq_len: NonEmpty(Tokens) = [128]


__all__ = ["LatencyConfig", "Mode"]
