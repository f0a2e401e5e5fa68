"""The forest plot's x axis stays readable on noisy data: ticks never closer than a share of the axis."""

import math

import pytest

from andromeda.report.compare_report import MIN_TICK_GAP, ratio_chart, ratio_ticks


@pytest.mark.parametrize("lo,hi", [(0.01, 300.0), (0.2, 5.0), (0.7, 1.5), (0.88, 1.13), (1e-4, 1e4)])
def test_ticks_are_inside_apart_and_include_one(lo, hi):
    band = [1 / 1.2, 1.2]
    ticks = ratio_ticks(lo, hi, [1.0, *band])
    span = math.log(hi / lo)
    assert 1.0 in ticks and all(lo <= t <= hi for t in ticks)
    gaps = [math.log(b / a) for a, b in zip(ticks, ticks[1:], strict=False)]
    assert min(gaps) >= MIN_TICK_GAP * span - 1e-12  # so at most 1 / MIN_TICK_GAP + 1 labels on any axis
    assert len(ticks) >= 3  # and enough to read a value off


def test_a_noisy_comparison_chart_renders():
    from andromeda.verdicts.comparison import compare_samples

    comps = [compare_samples([1.0, 50.0, 0.02, 3.0], [2.0, 0.01, 90.0, 1.0], "latency_ms", label=f"case {i}")
             for i in range(5)]
    png = ratio_chart(comps)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
