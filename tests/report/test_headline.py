"""The report's first screen: per model, the key numbers at a point every model ran, and the best of each."""

import pytest

from andromeda.report.headline import headline


def _latency_ms(scale, n):  # the physical model the synthetic records follow (conftest._latency), batch 1
    return scale * (0.9 + 0.0011 * n + 1.6e-7 * n * n)


def test_latency_column_is_at_a_point_every_model_ran_and_marks_the_best(records):
    h = headline(records)
    lat = h.columns[0]
    # hf:gpt2 ran forward at batch 1 only: the common point is forward, batch 1, the longest length 2048
    assert lat.title == "forward latency (batch 1, 2048 tokens)" and lat.unit == "ms"
    assert lat.values["andromeda:tiny"] == pytest.approx(_latency_ms(1.0, 2048), rel=0.05)
    assert lat.values["hf:gpt2"] == pytest.approx(_latency_ms(2.3, 2048), rel=0.05)
    assert lat.best == "andromeda:tiny"
    assert "lowest andromeda:tiny" in lat.sentence() and "better than hf:gpt2" in lat.sentence()


def test_throughput_is_the_peak_over_batch_sizes(records):
    thr = next(c for c in headline(records).columns if c.title.startswith("peak throughput"))
    # conftest: 21000 * b / (1 + b / 9) tokens/s for b in 1..32 (64 ran out of memory)
    assert thr.values == {"andromeda:tiny": pytest.approx(max(21000.0 * b / (1 + b / 9) for b in (1, 2, 4, 8, 16, 32)))}
    assert thr.best is None  # one model: nothing to mark


def test_a_run_without_those_scenarios_has_no_columns():
    assert headline([]).columns == []
