"""measure.stats against numpy / scipy on fixed samples."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from andromeda.measure.stats import bootstrap_ci, relative_ci_width, summarize


@pytest.fixture
def samples():
    rng = np.random.default_rng(123)
    return rng.lognormal(mean=np.log(20.0), sigma=0.15, size=101)  # skewed, like latencies (ms)


def test_summary_matches_numpy_and_scipy(samples):
    s = summarize(samples)
    assert s.n == 101
    assert s.mean == pytest.approx(np.mean(samples), rel=1e-12)
    assert s.median == pytest.approx(np.median(samples), rel=1e-12)
    assert s.std == pytest.approx(np.std(samples, ddof=1), rel=1e-12)
    assert s.min == samples.min() and s.max == samples.max()
    for q in (5, 50, 95, 99):
        assert getattr(s, f"p{q}") == pytest.approx(np.percentile(samples, q), rel=1e-12)
    assert s.iqr == pytest.approx(sps.iqr(samples), rel=1e-12)
    assert s.cv == pytest.approx(sps.variation(samples, ddof=1), rel=1e-12)
    assert s.ci_low <= s.median <= s.ci_high


def test_bootstrap_ci_agrees_with_scipy_percentile_method():
    rng = np.random.default_rng(7)
    x = rng.normal(100.0, 10.0, size=2000)
    ref = sps.bootstrap((x,), np.median, method="percentile", n_resamples=2000, confidence_level=0.95,
                        random_state=np.random.default_rng(1)).confidence_interval
    low, high = bootstrap_ci(x, np.median, ci=0.95, n_boot=2000, seed=0)
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.15 * width)
    assert high == pytest.approx(ref.high, abs=0.15 * width)
    assert high - low == pytest.approx(width, rel=0.25)


def test_bootstrap_is_seeded_and_ci_level_matters(samples):
    assert bootstrap_ci(samples, seed=3) == bootstrap_ci(samples, seed=3)
    lo90, hi90 = bootstrap_ci(samples, ci=0.90)
    lo99, hi99 = bootstrap_ci(samples, ci=0.99)
    assert hi99 - lo99 > hi90 - lo90


def test_relative_ci_width_is_width_over_median(samples):
    low, high = bootstrap_ci(samples, n_boot=2000, seed=0)
    assert relative_ci_width(samples) == pytest.approx((high - low) / np.median(samples))
    assert relative_ci_width([5.0] * 10) == 0.0
    assert math.isinf(relative_ci_width([0.0, 0.0, 0.0]))


def test_noisy_flag_follows_cv_threshold():
    quiet = [10.0, 10.1, 9.9, 10.05, 9.95]  # cv ~ 0.8%
    loud = [5.0, 15.0, 10.0, 20.0, 2.0]  # cv ~ 0.7
    assert not summarize(quiet).noisy
    assert summarize(loud).noisy
    assert not summarize(loud, noisy_cv=1.0).noisy


def test_single_sample_and_empty():
    s = summarize([3.0])
    assert s.median == 3.0 and s.ci_low == 3.0 and s.ci_high == 3.0
    assert math.isnan(s.std) and not s.noisy
    m = s.to_metrics("latency_ms")
    assert m["latency_ms"] == 3.0 and "latency_ms_std" not in m and "latency_ms_cv" not in m
    with pytest.raises(ValueError, match="no samples"):
        summarize([])
    with pytest.raises(ValueError, match="no samples"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])


def test_to_metrics_names_and_values(samples):
    m = summarize(samples).to_metrics("latency_ms")
    assert m["latency_ms"] == pytest.approx(np.median(samples))
    assert m["latency_ms_mean"] == pytest.approx(np.mean(samples))
    assert m["latency_ms_p95"] == pytest.approx(np.percentile(samples, 95))
    assert m["latency_ms_cv"] == pytest.approx(np.std(samples, ddof=1) / np.mean(samples))
    assert m["latency_ms_ci_low"] < m["latency_ms"] < m["latency_ms_ci_high"]
    assert all(isinstance(v, float) for v in m.values())
