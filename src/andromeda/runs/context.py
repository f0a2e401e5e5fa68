"""RunContext: what a scenario gets besides the model: device, dtype, timing, the case, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from andromeda.measure.timing import Timing, TimingConfig, time_fn
from andromeda.records import Record


@dataclass
class Case:
    """One model source x one scenario x one sweep point, with a stable id."""

    case_id: str
    source: str
    scenario: str
    params: dict[str, Any]
    group: str = ""  # cases of one source and one scenario entry (a sweep): finalize() sees them together


@dataclass
class RunContext:
    device: torch.device
    dtype: torch.dtype
    timing: TimingConfig
    env: dict[str, Any]
    peak_tflops: float | None = None
    seed: int = 0
    case: Case | None = None
    progress: Callable[[str], None] = lambda msg: None  # the live status line (replaced by the next one)
    log: Callable[[str], None] = lambda msg: None  # a line the user keeps on screen (a training step's loss)
    extra: dict[str, Any] = field(default_factory=dict)

    def peak_for(self, dtype: str) -> float | None:
        """Peak TFLOP/s for math in `dtype` ("bfloat16", ...): the run's figure for the run's dtype (a
        manifest override wins), else the device table's for this GPU; None off CUDA or when unknown."""
        if self.device.type != "cuda":
            return None
        if dtype == str(self.dtype).removeprefix("torch."):
            return self.peak_tflops
        from andromeda.measure.flops import device_peak_tflops

        names = self.env.get("gpu_names") or []
        return device_peak_tflops(names[0], dtype) if names else None

    def peak_for_precision(self, precision: str) -> float | None:
        """Peak TFLOP/s for a training precision: mixed bf16/fp16 matmuls (and bf16-master's bf16 weights) run in
        that dtype, so MFU is against its peak; fp32 against the run dtype's."""
        math = {"bf16": "bfloat16", "bf16-autocast": "bfloat16", "bf16-master": "bfloat16", "fp16": "float16"}.get(
            precision, str(self.dtype).removeprefix("torch."))
        return self.peak_for(math)

    def time(self, fn: Callable[[], object], setup: Callable[[], object] | None = None) -> Timing:
        return time_fn(fn, self.device, self.timing, setup=setup)

    def record(
        self,
        metrics: dict[str, float] | None = None,
        *,
        samples: dict[str, list[float]] | None = None,
        info: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        status: str = "ok",
        message: str | None = None,
    ) -> Record:
        assert self.case is not None, "record() is called while a case runs"
        return Record(
            case_id=self.case.case_id,
            scenario=self.case.scenario,
            source=self.case.source,
            params={**self.case.params, **(params or {})},
            status=status,
            metrics=metrics or {},
            samples=samples or {},
            message=message,
            info={"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), **(info or {})},
            env=self.env,
        )

    def skip(self, reason: str) -> list[Record]:
        return [self.record(status="skipped", message=reason)]
