"""throughput: tokens per second against batch size (run code: scenarios/throughput.py)."""

from __future__ import annotations

from typing import Literal

from andromeda.bench.fields import Batch, NonEmpty, Tokens
from andromeda.bench.scenarios.config import ScenarioConfig, register_config


@register_config
class ThroughputConfig(ScenarioConfig):
    SWEEP = ("batch", "seq_len")
    scenario: Literal["throughput"] = "throughput"
    mode: Literal["inference", "train"] = "inference"
    batch: NonEmpty(Batch) = [1, 2, 4, 8]
    seq_len: NonEmpty(Tokens) = [128]


__all__ = ["ThroughputConfig"]
