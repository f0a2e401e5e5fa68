"""scaling: time against sequence length or batch, with a fitted curve and OOM bisection (run code:
scenarios/scaling.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from andromeda.bench.fields import BATCH_MAX, Batch, Int, NonEmpty, Tokens
from andromeda.bench.scenarios.config import ScenarioConfig, register_config


@register_config
class ScalingConfig(ScenarioConfig):
    SWEEP = ("size",)
    scenario: Literal["scaling"] = "scaling"
    axis: Literal["seq_len", "batch"] = "seq_len"
    size: NonEmpty(Tokens) = [128, 256, 512, 1024]  # values of the swept axis
    batch: Batch = 1  # fixed batch when sweeping seq_len
    seq_len: Tokens = 128  # fixed length when sweeping batch
    bisect_oom: bool = True
    bisect_steps: Int(1, 64) = 6

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.axis == "batch":
            for i, s in enumerate(self.size):
                if s > BATCH_MAX:
                    raise ValueError(f"size[{i}]: axis batch: must be from 1 to {BATCH_MAX}, got {s}")
        return self


__all__ = ["ScalingConfig"]
