"""The noise a comparison must see through, so that a busy machine never reads as a regression.

- noise_floor(): an A/A comparison, a measurement against itself (its halves, its even/odd samples, or a
  rerun): the ratio CI that pure noise produces.
- NoiseFloor.reach: how far from 1 that A/A ratio CI reaches, either way: max(ci_high, 1 / ci_low) - 1.
  About the CI's half-width when the halves agree, more when the run drifted between them (a half-width
  alone would call a drifting run quiet). This is the noise floor the gate uses.
- Floors: the reach of every record's samples (first half vs second half), per case and as a run's
  median over its cases.
- gate(): a comparison with its noise floor (the largest reach of its two cases and of the two runs'
  medians) and the busy-machine flags of its two records (info["noisy"], set by the runner from
  measure/host_load.py). compare.decide() then calls a time or throughput difference "inconclusive (noisy)"
  when a side was flagged, or when it is significant but within the floor (the ratio, either way,
  within 1 + floor): only a significant difference beyond the noise floor and the threshold is a
  regression.

numpy/scipy only (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from andromeda.records import Record
from andromeda.verdicts.comparison import Comparison, _samples, decide, ratio_ci

MIN_SAMPLES = 8  # a case's own A/A floor needs 4+ samples per half
NOISE_KINDS = ("time", "throughput")  # the metrics a busy CPU distorts


@dataclass(frozen=True)
class NoiseFloor:
    """An A/A comparison: the ratio and its CI between two sample sets of the same thing."""

    ratio: float
    ci_low: float
    ci_high: float
    width: float  # ci_high - ci_low: ratios closer to 1 than about width/2 are indistinguishable
    n_a: int
    n_b: int
    method: str  # "halves", "interleaved" or "two runs"

    @property
    def reach(self) -> float:
        """max(ci_high, 1 / ci_low) - 1: the largest factor, either way, pure noise produced (NaN if unknown)."""
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high) and self.ci_low > 0):
            return math.nan
        return max(self.ci_high, 1.0 / self.ci_low) - 1.0


def noise_floor(
    samples: Sequence[float],
    other: Sequence[float] | None = None,
    *,
    split: Literal["halves", "interleaved"] = "halves",
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> NoiseFloor:
    """Ratio CI between two measurements of the same thing.

    With `other`: samples vs other (e.g. a run against a rerun of itself). Without: the samples
    split in two, first half vs second half ("halves", which also sees drift over the run) or even
    vs odd positions ("interleaved"). Needs at least 2 samples per part.
    """
    x = _samples(samples, "samples")
    if other is not None:
        a, b, method = x, _samples(other, "other"), "two runs"
    else:
        if split not in ("halves", "interleaved"):
            raise ValueError(f"split must be 'halves' or 'interleaved', got {split!r}")
        if x.size < 4:
            raise ValueError(f"noise_floor needs at least 4 samples to split, got {x.size}")
        a, b = (x[: x.size // 2], x[x.size // 2:]) if split == "halves" else (x[0::2], x[1::2])
        method = split
    if a.size < 2 or b.size < 2:
        raise ValueError("noise_floor needs at least 2 samples in each part")
    low, high = ratio_ci(a, b, ci=ci, n_boot=n_boot, seed=seed)
    ratio = float(np.median(b) / np.median(a)) if np.median(a) != 0 else math.nan
    return NoiseFloor(ratio, low, high, high - low, int(a.size), int(b.size), method)


class Floors:
    """A/A reach (NoiseFloor.reach of its halves) of every ok, non-fit record with MIN_SAMPLES+ samples of a
    metric."""

    def __init__(self, records: Iterable[Record], metrics: Sequence[str], *, n_boot: int = 2000, seed: int = 0):
        self._reach: dict[tuple[int, str], float] = {}
        for r in records:
            if r.status != "ok" or r.params.get("fit") is True:
                continue
            for m in metrics:
                s = r.samples.get(m)
                if s and len(s) >= MIN_SAMPLES and all(v is not None for v in s):
                    reach = noise_floor(s, n_boot=n_boot, seed=seed).reach
                    if math.isfinite(reach):
                        self._reach[(id(r), m)] = reach

    def case(self, record: Record, metric: str) -> float | None:
        """The record's own A/A reach for the metric, or None (too few samples)."""
        return self._reach.get((id(record), metric))

    def run(self, records: Iterable[Record]) -> float | None:
        """Median A/A reach over these records' cases and metrics; None when none has enough samples."""
        ids = {id(r) for r in records}
        reach = [x for (i, _), x in self._reach.items() if i in ids]
        return float(np.median(reach)) if reach else None


def flag(record: Record, side: str) -> str | None:
    """'<side>: <why>' when the record's case ran on a busy machine (info["noisy"]), else None."""
    why = record.info.get("noisy")
    return f"{side}: {why}" if why else None


def gate(comp: Comparison, floors: Sequence[float | None], flags: Sequence[str | None]) -> Comparison:
    """The comparison re-decided with its noise floor (the largest A/A reach given) and its sides' flags;
    metrics other than time and throughput are left as they are."""
    if comp.kind not in NOISE_KINDS:
        return comp
    known = [f for f in floors if f is not None]
    reasons = [f for f in flags if f]
    return decide(replace(comp, noise_floor=max(known) if known else None,
                          noisy="; ".join(reasons) if reasons else None))


__all__ = ["NoiseFloor", "noise_floor", "Floors", "flag", "gate", "MIN_SAMPLES", "NOISE_KINDS"]
