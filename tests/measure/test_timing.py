"""measure.timing: recovers known durations; honours min_runs, max_runs, budget; keeps raw samples.

The CPU path reads time.perf_counter, so most tests run on a fake clock that only the timed functions
advance: the expected samples are then exact, whatever else the machine is doing. Two tests use the real
clock and assert only orderings that hold on any machine, idle or loaded (a sleep never returns early; a
timed region contains the call it times).
"""

import statistics
import time

import pytest
import torch

from andromeda.measure import timing
from andromeda.measure.timing import Stopwatch, TimingConfig, time_fn

MS = 20.0


class FakeClock:
    """perf_counter for the timing module: time moves only when a test's function calls advance(ms)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


def test_recovers_sleep_duration():
    t = time_fn(lambda: time.sleep(MS / 1e3), "cpu", TimingConfig(warmup=1, min_runs=5, max_runs=10))
    # a sleep never returns early; how late it wakes depends on the machine's load: only the order is certain
    assert t.summary.min >= MS * 0.999
    assert t.summary.median < 50 * MS  # and nothing absurd (seconds for a 20 ms sleep)


def test_each_sample_brackets_the_call_on_the_real_clock():
    calls = []

    def fn():
        t0 = time.perf_counter()
        time.sleep(0.002)
        calls.append((time.perf_counter() - t0) * 1e3)

    t = time_fn(fn, "cpu", TimingConfig(warmup=2, min_runs=5, max_runs=8, target_rel_ci=None, budget_s=60))
    assert len(t.samples_ms) == 8 and len(calls) == 10
    for sample, inner in zip(t.samples_ms, calls[2:], strict=True):  # raw, in run order
        assert inner <= sample


def test_recovers_known_durations(clock):
    durations = iter([MS] * 10)
    t = time_fn(lambda: clock.advance(next(durations)), "cpu",
                TimingConfig(warmup=2, min_runs=5, max_runs=8, target_rel_ci=None, budget_s=10))
    assert t.stopped == "max_runs"
    assert len(t.samples_ms) == 8 and t.warmup_runs == 2
    assert t.samples_ms == pytest.approx([MS] * 8, rel=1e-9)
    assert t.summary.median == pytest.approx(MS, rel=1e-9)


def test_samples_are_raw_not_sorted(clock):
    durations = iter([8.0, 2.0, 6.0, 1.0] * 10)
    t = time_fn(lambda: clock.advance(next(durations)), "cpu",
                TimingConfig(warmup=0, min_runs=4, max_runs=4, target_rel_ci=None))
    assert t.samples_ms == pytest.approx([8.0, 2.0, 6.0, 1.0], rel=1e-9)


def test_min_runs_respected_when_stable_early(clock):
    n = [0]

    def fn():
        n[0] += 1
        clock.advance(1.0)

    t = time_fn(fn, "cpu", TimingConfig(warmup=3, min_runs=7, max_runs=100, target_rel_ci=10.0, budget_s=60))
    assert t.stopped == "stable"
    assert len(t.samples_ms) == 7
    assert n[0] == 3 + 7 and t.warmup_runs == 3


def test_budget_stops_measuring(clock):
    cfg = TimingConfig(warmup=0, min_runs=2, max_runs=1000, budget_s=0.09, target_rel_ci=None)
    t = time_fn(lambda: clock.advance(MS), "cpu", cfg)
    assert t.stopped == "budget"
    assert len(t.samples_ms) == 5  # 0.09 s of budget is spent during the fifth 20 ms run


def test_min_runs_beats_budget(clock):
    cfg = TimingConfig(warmup=0, min_runs=6, max_runs=1000, budget_s=0.01, target_rel_ci=None)
    t = time_fn(lambda: clock.advance(5.0), "cpu", cfg)
    assert len(t.samples_ms) == 6 and t.stopped == "budget"


def test_warmup_seconds_extends_warmup(clock):
    n = [0]

    def fn():
        n[0] += 1
        clock.advance(10.0)

    t = time_fn(fn, "cpu", TimingConfig(warmup=1, warmup_s=0.075, min_runs=2, max_runs=2, target_rel_ci=None))
    assert t.warmup_runs == 8  # 10 ms calls until 0.075 s have passed
    assert n[0] == t.warmup_runs + 2


def test_summary_is_of_the_samples(clock):
    durations = iter([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    t = time_fn(lambda: clock.advance(next(durations)), "cpu",
                TimingConfig(warmup=0, min_runs=6, max_runs=6, target_rel_ci=None))
    assert t.summary.n == 6
    assert t.summary.median == pytest.approx(statistics.median([3.0, 1.0, 4.0, 1.0, 5.0, 9.0]), rel=1e-9)
    assert t.summary.min == pytest.approx(1.0) and t.summary.max == pytest.approx(9.0)


def test_config_validation_and_cpu_rejects_cuda_options():
    with pytest.raises(ValueError, match="max_runs"):
        TimingConfig(min_runs=5, max_runs=3)
    with pytest.raises(ValueError, match="min_runs"):
        TimingConfig(min_runs=0)
    with pytest.raises(ValueError, match="CUDA"):
        time_fn(lambda: None, "cpu", TimingConfig(cuda_graph=True))


def test_setup_runs_before_each_call_outside_the_timed_region(clock):
    log = []

    def setup():
        log.append("setup")
        clock.advance(10.0)

    def fn():
        log.append("fn")
        clock.advance(2.0)

    t = time_fn(fn, "cpu", TimingConfig(warmup=2, min_runs=4, max_runs=4, target_rel_ci=None), setup=setup)
    assert log == ["setup", "fn"] * (2 + 4)
    assert t.samples_ms == pytest.approx([2.0] * 4, rel=1e-9)  # the 10 ms setup is in no sample


def test_stopwatch(clock):
    with Stopwatch("cpu") as sw:
        clock.advance(5.0)
    assert sw.elapsed_ms == pytest.approx(5.0, rel=1e-9)


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
