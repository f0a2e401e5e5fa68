"""Timing of a callable: warm-up, then repeat until the median is stable, a time budget, or max_runs.

CUDA: each run is bracketed by a pair of CUDA events on the current stream, and the device is
synchronized before the events are read. CPU: time.perf_counter around the call. MPS and other
accelerators: the device is synchronized before each clock read. Raw samples are kept (ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from andromeda.measure.stats import Summary, relative_ci_width, summarize
from andromeda.measure.timing_config import TimingConfig

Stopped = Literal["stable", "budget", "max_runs"]
Setup = Callable[[], object] | None

# Stability is checked after min_runs and then every _CHECK_EVERY runs, with a cheap bootstrap.
_CHECK_EVERY = 5
_CHECK_BOOT = 500
_L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB, H200: 60 MiB)


@dataclass
class Timing:
    samples_ms: list[float]  # raw per-run times in milliseconds, in run order
    summary: Summary  # of samples_ms (ms)
    warmup_runs: int  # calls made before timing (including graph warm-up and capture)
    stopped: Stopped  # why measuring stopped

    @property
    def median_ms(self) -> float:
        return self.summary.median


def cuda_sync(device: torch.device | str) -> None:
    """Wait for all queued work on `device` (CUDA, MPS, XPU...); a no-op on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
    elif dev.type != "cpu":
        mod = getattr(torch, dev.type, None)
        if mod is not None and hasattr(mod, "synchronize"):
            mod.synchronize()


class Stopwatch:
    """Wall-clock time of a block, synchronizing the device on entry and exit.

    with Stopwatch("cuda") as sw: ...;  sw.elapsed_s, sw.elapsed_ms
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.elapsed_s = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        cuda_sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        cuda_sync(self.device)
        self.elapsed_s = time.perf_counter() - self._t0

    @property
    def elapsed_ms(self) -> float:
        return self.elapsed_s * 1e3


def _warm_up(
    call: Callable[[], object], device: torch.device, count: int, seconds: float, setup: Setup = None
) -> int:
    """Run `call` at least `count` times and until `seconds` have passed; returns the number of runs."""
    runs, t0 = 0, time.perf_counter()
    while runs < count or time.perf_counter() - t0 < seconds:
        if setup is not None:
            setup()
        call()
        cuda_sync(device)
        runs += 1
    return runs


def _capture_graph(fn: Callable[[], object], device: torch.device, cfg: TimingConfig) -> tuple[Callable, int]:
    """Warm fn up on a side stream, capture it into a CUDA graph; returns (graph.replay, warm-up runs)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        runs = _warm_up(fn, device, max(cfg.warmup, 1), cfg.warmup_s)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    graph.replay()  # first replay pays one-time costs
    torch.cuda.synchronize(device)
    return graph.replay, runs + 2


def _cuda_timer(
    call: Callable[[], object], device: torch.device, flush: torch.Tensor | None, setup: Setup
) -> Callable:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def run() -> float:
        if setup is not None:
            setup()  # queued before `start`: not inside the timed region
        if flush is not None:
            flush.zero_()  # queued before `start`: not inside the timed region
        stream = torch.cuda.current_stream(device)
        start.record(stream)
        call()
        end.record(stream)
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))  # ms

    return run


def _host_timer(call: Callable[[], object], device: torch.device, setup: Setup) -> Callable:
    def run() -> float:
        if setup is not None:
            setup()
        cuda_sync(device)
        t0 = time.perf_counter()
        call()
        cuda_sync(device)
        return (time.perf_counter() - t0) * 1e3  # ms

    return run


def stop_reason(series: Sequence[Sequence[float]], cfg: TimingConfig, elapsed_s: float) -> Stopped | None:
    """Why to stop measuring after the latest sample, or None to take another: from min_runs on, "stable" once
    the bootstrap CI of every series' median (checked at min_runs and every _CHECK_EVERY runs after) is
    narrower than target_rel_ci of it, "budget" once the measuring has taken budget_s; "max_runs" at max_runs.
    series: the sample lists judged (equal lengths): time_fn's times, or several metrics of one run."""
    n = len(series[0])
    if n >= cfg.min_runs:
        if (cfg.target_rel_ci is not None and n >= 2 and (n - cfg.min_runs) % _CHECK_EVERY == 0
                and all(relative_ci_width(s, n_boot=_CHECK_BOOT) < cfg.target_rel_ci for s in series)):
            return "stable"
        if elapsed_s >= cfg.budget_s:
            return "budget"
    return "max_runs" if n >= cfg.max_runs else None


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    cfg: TimingConfig | None = None,
    *,
    setup: Setup = None,
) -> Timing:
    """Time `fn()` (no arguments) on `device` per `cfg`; returns raw samples (ms) and their summary.

    `setup()`, if given, runs before every call (warm-up and timed), outside the timed region:
    e.g. a forward pass whose backward `fn` times.

    Stops after at least min_runs when the relative width of the median's 95% bootstrap CI is
    below target_rel_ci ("stable") or the measuring phase has taken budget_s ("budget"), else
    at max_runs ("max_runs").
    """
    cfg = cfg or TimingConfig()
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    if (cfg.cuda_graph or cfg.flush_l2) and not is_cuda:
        raise ValueError(f"cuda_graph and flush_l2 need a CUDA device, got '{dev}'")
    if cfg.cuda_graph and setup is not None:
        raise ValueError("cuda_graph cannot be combined with a per-run setup: a graph replays fixed work")

    call: Callable[[], object] = fn
    if cfg.cuda_graph:
        call, warmup_runs = _capture_graph(fn, dev, cfg)
    else:
        warmup_runs = _warm_up(fn, dev, cfg.warmup, cfg.warmup_s, setup)

    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=dev) if cfg.flush_l2 else None
    timer = _cuda_timer(call, dev, flush, setup) if is_cuda else _host_timer(call, dev, setup)

    samples: list[float] = []
    t_start = time.perf_counter()
    while True:
        samples.append(timer())
        stopped = stop_reason([samples], cfg, time.perf_counter() - t_start)
        if stopped is not None:
            break
    del flush
    return Timing(samples_ms=samples, summary=summarize(samples), warmup_runs=warmup_runs, stopped=stopped)


__all__ = ["TimingConfig", "Timing", "time_fn", "stop_reason", "cuda_sync", "Stopwatch"]
