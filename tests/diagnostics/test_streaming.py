"""Streaming statistics against the same statistics of the whole tensor, computed in float64."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from andromeda.diagnostics.streaming import RunningStats, sq_norm, tensor_stats


def _chunks():
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(1000, generator=g) * 3 + 5,  # shifted
        torch.relu(torch.randn(37, 11, generator=g)),  # many exact zeros
        torch.distributions.StudentT(3.0).sample((2500,)) * 0.1,  # heavy tails
        torch.zeros(64),  # all zeros
        torch.randn(7, generator=g).to(torch.bfloat16),  # another dtype
        torch.tensor([1e4, -2e4, 0.5]),  # a few large values
    ]


def test_streaming_equals_full_tensor_in_float64():
    chunks = _chunks()
    rs = RunningStats(slice_elems=300)  # slices inside chunks too
    for c in chunks:
        rs.update(c)
    s = rs.summary()
    full = torch.cat([c.double().reshape(-1) for c in chunks]).numpy()
    n = full.size
    assert s["count"] == n
    assert s["mean"] == pytest.approx(full.mean(), rel=1e-12, abs=1e-12)
    assert s["std"] == pytest.approx(full.std(ddof=0), rel=1e-10)
    assert s["min"] == full.min() and s["max"] == full.max()
    assert s["rms"] == pytest.approx(math.sqrt((full**2).mean()), rel=1e-12)
    assert s["l2_norm"] == pytest.approx(np.linalg.norm(full), rel=1e-12)
    assert s["kurtosis"] == pytest.approx(sps.kurtosis(full, fisher=False, bias=True), rel=1e-9)
    assert s["skewness"] == pytest.approx(sps.skew(full, bias=True), rel=1e-9)
    assert s["zero_frac"] == pytest.approx((full == 0).mean(), rel=1e-15)
    assert s["nan_count"] == 0 and s["inf_count"] == 0


def test_nan_inf_are_counted_and_left_out_of_the_moments():
    x = torch.tensor([1.0, float("nan"), 2.0, float("inf"), -float("inf"), 3.0, float("nan")])
    s = tensor_stats(x, slice_elems=3)
    assert s["nan_count"] == 2 and s["inf_count"] == 2
    assert s["count"] == 3 and s["mean"] == pytest.approx(2.0) and s["max"] == 3.0


def test_merge_of_accumulators_equals_one_accumulator():
    a, b, both = RunningStats(), RunningStats(), RunningStats()
    chunks = _chunks()
    for i, c in enumerate(chunks):
        (a if i % 2 else b).update(c)
        both.update(c)
    merged = a.merge(b).summary()
    ref = both.summary()
    for k in ("count", "mean", "std", "min", "max", "rms", "kurtosis", "zero_frac"):
        assert merged[k] == pytest.approx(ref[k], rel=1e-10), k


def test_saturation_dead_channels_and_norm():
    x = torch.tensor([[0.0, 5.0, -7.0], [0.0, 1.0, 0.5]])
    s = tensor_stats(x, saturation=5.0, channels=True)
    assert s["saturated_frac"] == pytest.approx(2 / 6)
    assert s["dead_frac"] == pytest.approx(1 / 3)  # channel 0 is zero everywhere
    # default threshold: half the dtype's largest value
    h = torch.tensor([60000.0, 1.0], dtype=torch.float16)
    assert tensor_stats(h)["saturated_frac"] == 0.5
    assert sq_norm(torch.arange(10.0), slice_elems=3) == sum(i * i for i in range(10))
