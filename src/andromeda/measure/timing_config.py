"""TimingConfig: how time_fn (measure/timing.py) measures. Torch-free, so that a manifest's `timing:`
section (runs/manifest.py, with the upper bounds a manifest has) validates without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TimingConfig:
    warmup: int = 2  # warm-up runs (not timed)
    warmup_s: float = 0.0  # and keep warming up until this many seconds have passed
    min_runs: int = 5
    max_runs: int = 200
    budget_s: float = 1.0  # stop once the measuring phase has taken this long (wall clock, s)
    target_rel_ci: float | None = 0.02  # stop once (ci_high - ci_low) / median < this; None = never
    flush_l2: bool = False  # CUDA: overwrite a 256 MiB buffer before each run (outside the timed region)
    cuda_graph: bool = False  # CUDA: capture fn once into a CUDA graph and time graph.replay()

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.warmup_s < 0:
            raise ValueError(f"warmup ({self.warmup}) and warmup_s ({self.warmup_s}) must be >= 0")
        if self.min_runs < 1:
            raise ValueError(f"min_runs must be >= 1, got {self.min_runs}")
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        if self.target_rel_ci is not None and self.target_rel_ci <= 0:
            raise ValueError(f"target_rel_ci must be > 0 or None, got {self.target_rel_ci}")


__all__ = ["TimingConfig"]
