"""Formulas of multi-process benchmarks: bus bandwidth, load balance, stragglers, scaling efficiency.

numpy only (no torch): the report layer may use them on machines without torch.

Bus bandwidth is as nccl-tests defines it (PERFORMANCE.md of NVIDIA/nccl-tests): with S the size
of the operation in bytes (all-reduce: the buffer; all-gather: the gathered output, n x each
rank's input) and t its time, algbw = S / t, and
  all-reduce   busbw = algbw * 2(n-1)/n
  all-gather   busbw = algbw * (n-1)/n
  reduce-scatter busbw = algbw * (n-1)/n   (S: the input, n x each rank's output)
  broadcast    busbw = algbw
so that busbw is comparable with the hardware's link bandwidth whatever n is. One rank moves no
data between ranks: its bus bandwidth is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BUS_FACTOR = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0 if n > 1 else 0.0,
}
COLLECTIVES = tuple(_BUS_FACTOR)


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw for `op` over `n` ranks."""
    if op not in _BUS_FACTOR:
        raise ValueError(f"collective '{op}' is unknown; known: {', '.join(COLLECTIVES)}")
    if n < 1:
        raise ValueError(f"the number of ranks must be >= 1, got {n}")
    return float(_BUS_FACTOR[op](n))


def algbw_gbps(size_bytes: float, seconds: float) -> float:
    """Algorithm bandwidth in GB/s (1e9 bytes per second, as nccl-tests prints it)."""
    if seconds <= 0:
        raise ValueError(f"a time must be > 0, got {seconds}")
    return size_bytes / seconds / 1e9


def busbw_gbps(op: str, size_bytes: float, seconds: float, n: int) -> float:
    """Bus bandwidth in GB/s: algbw x bus_factor(op, n)."""
    return algbw_gbps(size_bytes, seconds) * bus_factor(op, n)


def rank_spread(values: Sequence[float]) -> dict[str, float]:
    """Spread of one value per rank: max/min and the coefficient of variation across ranks.

    The CV is std/mean with the population std (ddof=0): the ranks are all there are, not a sample.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no ranks")
    out = {"max": float(x.max()), "min": float(x.min()), "mean": float(x.mean())}
    out["max_over_min"] = float(x.max() / x.min()) if x.min() > 0 else float("nan")
    out["cv"] = float(x.std(ddof=0) / x.mean()) if x.mean() > 0 else float("nan")
    return out


def stragglers(medians: Sequence[float], threshold: float) -> list[int]:
    """Ranks whose median exceeds the median of the other ranks' medians by more than `threshold`
    (a fraction: 0.1 = 10% slower). One rank has no others to lag behind: none."""
    if threshold < 0:
        raise ValueError(f"the straggler threshold must be >= 0, got {threshold}")
    m = [float(v) for v in medians]
    out = []
    for r, v in enumerate(m):
        others = m[:r] + m[r + 1:]
        if not others:
            continue
        ref = float(np.median(others))
        if ref > 0 and v > ref * (1.0 + threshold):
            out.append(r)
    return out


def load_balance(per_rank: Sequence[Sequence[float]], threshold: float, prefix: str) -> tuple[dict[str, float],
                                                                                            list[int]]:
    """Metrics of the per-rank spread of a time (per-rank samples -> medians) and the stragglers.

    Metrics: {prefix}_max_over_min_ranks, {prefix}_cv_ranks (of the per-rank medians),
    {prefix}_slowest_rank, stragglers (their count).
    """
    medians = [float(np.median(s)) for s in per_rank]
    spread = rank_spread(medians)
    slow = stragglers(medians, threshold)
    metrics = {
        f"{prefix}_max_over_min_ranks": spread["max_over_min"],
        f"{prefix}_cv_ranks": spread["cv"],
        f"{prefix}_slowest_rank": float(int(np.argmax(medians))),
        "stragglers": float(len(slow)),
    }
    return metrics, slow


def scaling_efficiency(ranks: Sequence[int], throughput: Sequence[float]) -> tuple[int, list[float]]:
    """Throughput at n ranks over n/n0 times the throughput at the fewest ranks n0 (1 when present).

    Strong scaling (global batch fixed): T(n0) n0 / (T(n) n) in time terms; weak scaling (per-rank
    batch fixed): the same ratio of throughputs. 1.0 is linear scaling. Returns (n0, efficiencies).
    """
    if len(ranks) != len(throughput) or not ranks:
        raise ValueError("ranks and throughput must be non-empty and of equal length")
    i0 = int(np.argmin(ranks))
    n0, t0 = int(ranks[i0]), float(throughput[i0])
    return n0, [float(t) / (t0 * n / n0) for n, t in zip(ranks, throughput, strict=True)]


__all__ = ["COLLECTIVES", "bus_factor", "algbw_gbps", "busbw_gbps", "rank_spread", "stragglers", "load_balance",
           "scaling_efficiency"]
