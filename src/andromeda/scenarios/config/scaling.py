"""scaling: time against sequence length or batch, with a fitted curve and OOM bisection (run code:
scenarios/scaling.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import BATCH_MAX, Batch, Int, NonEmpty, Tokens


@register_config
class ScalingConfig(ScenarioConfig):
    SWEEP = ("size",)
    scenario: Literal["scaling"] = Field("scaling", description=(
        "The scenario: scaling (latency over length or batch, with a fit a + bN + cN^2 and the OOM "
        "boundary)."))
    axis: Literal["seq_len", "batch"] = Field("seq_len", description="The swept axis: seq_len or batch.")
    size: NonEmpty(Tokens) = Field([128, 256, 512, 1024], description="Values of the swept axis.")
    batch: Batch = Field(1, description="Fixed batch when sweeping seq_len.")
    seq_len: Tokens = Field(128, description="Fixed length when sweeping batch.")
    bisect_oom: bool = Field(True, description=(
        "After an OOM, bisect between the last point that fit and the first that did not to find the "
        "boundary."))
    bisect_steps: Int(1, 64) = Field(6, description="Bisection steps at most.")

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.axis == "batch":
            for i, s in enumerate(self.size):
                if s > BATCH_MAX:
                    raise ValueError(f"size[{i}]: axis batch: must be from 1 to {BATCH_MAX}, got {s}")
        return self


__all__ = ["ScalingConfig"]
