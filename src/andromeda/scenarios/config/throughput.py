"""throughput: tokens per second against batch size (run code: scenarios/throughput.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import Batch, NonEmpty, Tokens


@register_config
class ThroughputConfig(ScenarioConfig):
    SWEEP = ("batch", "seq_len")
    scenario: Literal["throughput"] = Field("throughput", description=(
        "The scenario: throughput (tokens/s over batch sizes until OOM)."))
    mode: Literal["inference", "train"] = Field("inference", description=(
        "inference (forward, no grad) or train (forward + backward)."))
    batch: NonEmpty(Batch) = Field([1, 2, 4, 8], description=(
        "Batch sizes (swept); larger ones are skipped after an OOM."))
    seq_len: NonEmpty(Tokens) = Field([128], description="Tokens per sequence (swept).")


__all__ = ["ThroughputConfig"]
