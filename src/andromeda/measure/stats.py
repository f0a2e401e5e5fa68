"""Summary statistics of repeated measurements: median with a bootstrap CI, percentiles, IQR, CV.

numpy + scipy only (no torch): the report layer may use it on machines without torch.
Units are whatever the samples are in (the timing layer passes milliseconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Bootstrap resamples are drawn in chunks of at most this many elements (resamples x n) to bound memory.
_CHUNK_ELEMS = 4_000_000


@dataclass
class Summary:
    n: int
    mean: float
    median: float
    std: float  # sample standard deviation (ddof=1); NaN when n == 1
    min: float
    max: float
    p5: float
    p50: float
    p95: float
    p99: float
    iqr: float  # p75 - p25
    cv: float  # std / mean; NaN when undefined (n == 1 or mean == 0)
    ci_low: float  # bootstrap CI of the median (percentile method)
    ci_high: float
    noisy: bool  # cv above the threshold given to summarize()

    def to_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics: {prefix: median, prefix_mean, prefix_p95, prefix_ci_low, prefix_cv, ...}.

        Values that are not finite (std/cv of one sample) are left out: a metric we name, we computed.
        """
        d = asdict(self)
        out: dict[str, float] = {prefix: float(self.median)}
        for key in ("mean", "std", "min", "max", "p5", "p50", "p95", "p99", "iqr", "cv", "ci_low", "ci_high"):
            out[f"{prefix}_{key}"] = float(d[key])
        out[f"{prefix}_n"] = float(self.n)
        return {k: v for k, v in out.items() if math.isfinite(v)}


def _as_samples(samples: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64).reshape(-1)  # (n,)
    if x.size == 0:
        raise ValueError("no samples: need at least one measurement to summarize")
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"samples must be finite numbers; got {bad} NaN/inf value(s)")
    return x


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    stat: Callable[..., np.ndarray] = np.median,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of `stat` (called as stat(array, axis=1)).

    Resamples with replacement n_boot times from a generator seeded with `seed`, so the same
    samples give the same interval. One sample gives a zero-width interval at that value.
    """
    x = _as_samples(samples)
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = x.size
    if n == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMS // n)
    stats = np.empty(n_boot, dtype=np.float64)  # (n_boot,)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        stats[start:stop] = stat(x[idx], axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(stats, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def relative_ci_width(
    samples: Sequence[float] | np.ndarray, *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> float:
    """(ci_high - ci_low) / |median| of the median's bootstrap CI: the stability criterion.

    inf when the median is 0 (no relative width can be stated).
    """
    x = _as_samples(samples)
    low, high = bootstrap_ci(x, np.median, ci=ci, n_boot=n_boot, seed=seed)
    med = abs(float(np.median(x)))
    if med == 0.0:
        return math.inf
    return (high - low) / med


def summarize(
    samples: Sequence[float] | np.ndarray,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    noisy_cv: float = 0.10,
) -> Summary:
    """Summary of raw samples; percentiles use numpy's default (linear) interpolation."""
    x = _as_samples(samples)
    n = x.size
    p5, p25, p50, p75, p95, p99 = (float(v) for v in np.percentile(x, [5, 25, 50, 75, 95, 99]))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    cv = std / mean if (n > 1 and mean != 0.0) else math.nan
    ci_low, ci_high = bootstrap_ci(x, np.median, ci=ci, n_boot=n_boot, seed=seed)
    return Summary(
        n=n,
        mean=mean,
        median=float(np.median(x)),
        std=std,
        min=float(x.min()),
        max=float(x.max()),
        p5=p5,
        p50=p50,
        p95=p95,
        p99=p99,
        iqr=p75 - p25,
        cv=cv,
        ci_low=ci_low,
        ci_high=ci_high,
        noisy=bool(math.isfinite(cv) and abs(cv) > noisy_cv),
    )


__all__ = ["Summary", "summarize", "bootstrap_ci", "relative_ci_width"]
