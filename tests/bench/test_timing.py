"""bench.timing: recovers known durations; honours min_runs, max_runs, budget; keeps raw samples."""

import statistics
import time

import pytest
import torch

from andromeda.bench.timing import Stopwatch, TimingConfig, time_fn

MS = 20.0


def spin(ms: float) -> None:
    """Busy-wait until perf_counter says `ms` milliseconds have passed."""
    t0 = time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < ms:
        pass


def test_recovers_sleep_duration():
    t = time_fn(lambda: time.sleep(MS / 1e3), "cpu", TimingConfig(warmup=1, min_runs=5, max_runs=10))
    # sleep never returns early and overshoots by scheduler latency: allow +15%
    assert MS * 0.999 <= t.summary.median <= MS * 1.15
    assert t.summary.min >= MS * 0.999


def test_recovers_busy_loop_duration_against_perf_counter():
    calls = []

    def fn():
        t0 = time.perf_counter()
        spin(MS)
        calls.append((time.perf_counter() - t0) * 1e3)

    t = time_fn(fn, "cpu", TimingConfig(warmup=2, min_runs=5, max_runs=8, target_rel_ci=None, budget_s=10))
    assert t.stopped == "max_runs"
    assert len(t.samples_ms) == 8 and t.warmup_runs == 2
    assert len(calls) == 10
    assert t.summary.median == pytest.approx(MS, rel=0.10)
    # raw, in run order: each sample brackets the call's own perf_counter measurement
    for sample, inner in zip(t.samples_ms, calls[2:], strict=True):
        assert inner <= sample <= inner + 2.0


def test_samples_are_raw_not_sorted():
    durations = iter([8.0, 2.0, 6.0, 1.0] * 10)
    t = time_fn(lambda: spin(next(durations)), "cpu",
                TimingConfig(warmup=0, min_runs=4, max_runs=4, target_rel_ci=None))
    assert len(t.samples_ms) == 4
    assert t.samples_ms == pytest.approx([8.0, 2.0, 6.0, 1.0], abs=1.5)


def test_min_runs_respected_when_stable_early():
    n = [0]

    def fn():
        n[0] += 1
        spin(1.0)

    t = time_fn(fn, "cpu", TimingConfig(warmup=3, min_runs=7, max_runs=100, target_rel_ci=10.0, budget_s=60))
    assert t.stopped == "stable"
    assert len(t.samples_ms) == 7
    assert n[0] == 3 + 7 and t.warmup_runs == 3


def test_budget_stops_measuring():
    cfg = TimingConfig(warmup=0, min_runs=2, max_runs=1000, budget_s=0.1, target_rel_ci=None)
    t = time_fn(lambda: time.sleep(MS / 1e3), "cpu", cfg)
    assert t.stopped == "budget"
    # every run takes >= 20 ms, so 0.1 s of budget is spent after at most 5 runs
    assert 2 <= len(t.samples_ms) <= 5


def test_min_runs_beats_budget():
    cfg = TimingConfig(warmup=0, min_runs=6, max_runs=1000, budget_s=0.01, target_rel_ci=None)
    t = time_fn(lambda: time.sleep(0.005), "cpu", cfg)
    assert len(t.samples_ms) == 6 and t.stopped == "budget"


def test_warmup_seconds_extends_warmup():
    n = [0]

    def fn():
        n[0] += 1
        time.sleep(0.01)

    t0 = time.perf_counter()
    t = time_fn(fn, "cpu", TimingConfig(warmup=1, warmup_s=0.08, min_runs=2, max_runs=2, target_rel_ci=None))
    assert t.warmup_runs >= 2  # 0.08 s of 10 ms calls: more than the one counted run
    assert t.warmup_runs <= 9  # each call takes >= 10 ms: warm-up ends once 0.08 s have passed
    assert n[0] == t.warmup_runs + 2
    assert time.perf_counter() - t0 >= 0.08 + 0.02


def test_summary_is_of_the_samples():
    t = time_fn(lambda: spin(1.0), "cpu", TimingConfig(warmup=0, min_runs=6, max_runs=6, target_rel_ci=None))
    assert t.summary.n == 6
    assert t.summary.median == pytest.approx(statistics.median(t.samples_ms), rel=1e-12)
    assert t.summary.min == min(t.samples_ms) and t.summary.max == max(t.samples_ms)


def test_config_validation_and_cpu_rejects_cuda_options():
    with pytest.raises(ValueError, match="max_runs"):
        TimingConfig(min_runs=5, max_runs=3)
    with pytest.raises(ValueError, match="min_runs"):
        TimingConfig(min_runs=0)
    with pytest.raises(ValueError, match="CUDA"):
        time_fn(lambda: None, "cpu", TimingConfig(cuda_graph=True))


def test_setup_runs_before_each_call_outside_the_timed_region():
    log = []

    def setup():
        log.append("setup")
        spin(10.0)

    def fn():
        log.append("fn")
        spin(2.0)

    t = time_fn(fn, "cpu", TimingConfig(warmup=2, min_runs=4, max_runs=4, target_rel_ci=None), setup=setup)
    assert log == ["setup", "fn"] * (2 + 4)
    assert all(2.0 <= s < 7.0 for s in t.samples_ms)  # the 10 ms setup is not in any sample


def test_stopwatch():
    with Stopwatch("cpu") as sw:
        spin(5.0)
    assert 5.0 <= sw.elapsed_ms <= 15.0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("graph,flush", [(False, False), (False, True), (True, False)])
def test_cuda_events_time_a_known_kernel(graph, flush):
    # torch.cuda._sleep spins the GPU for a number of cycles; calibrate cycles -> ms with a host stopwatch
    cycles = 20_000_000
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    host_ms = (time.perf_counter() - t0) * 1e3 / 5
    cfg = TimingConfig(warmup=2, min_runs=5, max_runs=20, cuda_graph=graph, flush_l2=flush)
    t = time_fn(lambda: torch.cuda._sleep(cycles), "cuda", cfg)
    assert t.summary.median == pytest.approx(host_ms, rel=0.15)


@pytest.mark.cuda
@cuda
def test_cuda_events_time_a_matmul_like_host_clock():
    a = torch.randn(4096, 4096, device="cuda")
    fn = lambda: a @ a
    t = time_fn(fn, "cuda", TimingConfig(warmup=3, min_runs=10, max_runs=50))
    with Stopwatch("cuda") as sw:
        for _ in range(20):
            fn()
    assert t.summary.median == pytest.approx(sw.elapsed_ms / 20, rel=0.2)
