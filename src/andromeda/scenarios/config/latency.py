"""latency: forward, inference, backward, forward+backward and end-to-end time of one batch (run code:
scenarios/latency.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import Batch, NonEmpty, Tokens

Mode = Literal["forward", "inference", "backward", "fwd_bwd", "e2e"]


@register_config
class LatencyConfig(ScenarioConfig):
    SWEEP = ("mode", "batch", "seq_len")
    scenario: Literal["latency"] = Field("latency", description="The scenario: latency (time of one batch).")
    mode: NonEmpty(Mode) = Field(["forward"], description=(
        "What is timed (swept): forward, inference (no grad), backward, fwd_bwd, e2e (tokenize seq_len bytes, "
        "forward, pick and decode the next token)."))
    batch: NonEmpty(Batch) = Field([1], description="Sequences per batch (swept).")
    seq_len: NonEmpty(Tokens) = Field([128], description="Tokens per sequence (swept).")


__all__ = ["LatencyConfig", "Mode"]
