"""Number formatting, headers with units, the chart registry and edge cases of the input file."""

from __future__ import annotations

import json

import pytest

from andromeda.records import Record, RecordStore
from andromeda.report import build_report
from andromeda.report.charts import CHARTS, register
from andromeda.report.format import fmt_ci, fmt_number, latex_number, metric_header


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (float("nan"), "—"),
        (0.0, "0"),
        (3, "3"),
        (True, "yes"),
        (1.23456, "1.235"),
        (12.3456, "12.35"),
        (0.0012345, "0.001234"),  # 4 significant digits, round-half-even on the binary value
        (123456.7, "123457"),  # large values whole, never 1.235e+05
        (1.2e-5, "1.2e-05"),
    ],
)
def test_fmt_number(value, text):
    assert fmt_number(value) == text


def test_fmt_ci_and_latex():
    assert fmt_ci(12.345, 12.0, 12.9) == "12.35 [12, 12.9]"
    assert fmt_ci(12.345, None, None) == "12.35"
    assert latex_number("1.2e-05") == r"$1.2\times10^{-5}$"


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("latency_ms", "latency (ms)"),
        ("latency_ms_p95", "latency p95 (ms)"),
        ("latency_ms_cv", "latency CV"),
        ("tokens_per_s", "throughput (tok/s)"),
        ("peak_allocated_mib", "peak allocated (MiB)"),
        ("kv_bytes_per_token_analytic", "KV analytic (B/tok)"),
        ("fit_c_ms_per_token2", "fit c (ms/tok²)"),
        ("tflops", "compute (TFLOP/s)"),
        ("mfu", "MFU (datasheet peak)"),
        ("mfu_ci_low", "MFU (datasheet peak) CI low"),
        ("mfu_measured_peak", "MFU (measured matmul peak)"),
        ("prefill_8192_mfu", "prefill 8192 MFU (datasheet peak)"),
        ("prefill_8192_mfu_measured_peak", "prefill 8192 MFU (measured matmul peak)"),
        ("hfu", "HFU"),
        ("hardware_tflops", "hardware (TFLOP/s)"),
        ("effective_tflops", "effective TFLOP/s (dense causal FLOPs / time)"),
        ("something_new", "something new"),
    ],
)
def test_metric_header(name, header):
    assert metric_header(name) == header


def _recs(scenario: str) -> list[Record]:
    return [
        Record(
            case_id=f"c{i}",
            scenario=scenario,
            source="andromeda:tiny",
            params={"n": n},
            metrics={"y_ms": n / 3},
        )
        for i, n in enumerate((1, 2, 4))
    ]


def test_registered_chart_for_new_scenario_and_failing_chart(tmp_path):
    def good(ax, df, records):
        ax.plot(df["params.n"].astype(float), df["metrics.y_ms"])
        ax.set_xlabel("n")
        ax.set_ylabel("y (ms)")
        return True

    def bad(ax, df, records):
        raise KeyError("no such column")

    register("toy_scenario", "line", "Toy")(good)
    register("toy_scenario", "broken", "Broken")(bad)
    try:
        RecordStore(tmp_path / "results.jsonl").append(_recs("toy_scenario"))
        written = build_report(tmp_path, ["png", "json"])
    finally:
        CHARTS.pop("toy_scenario")
    assert [p.name for p in written["png"]] == ["toy_scenario_line.png"]  # not key: no summary panel
    warnings = json.loads((tmp_path / "report.json").read_text())["warnings"]
    assert any(w["kind"] == "chart" and "toy_scenario/broken" in w["message"] for w in warnings)


def test_truncated_line_is_reported_not_dropped_silently(tmp_path):
    path = tmp_path / "results.jsonl"
    RecordStore(path).append(_recs("toy"))
    with open(path, "a") as f:
        f.write(
            '{"case_id": "cut',
        )  # a crash mid-write
    build_report(tmp_path, ["json", "md"])
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["records"]) == 3
    assert data["warnings"][0]["kind"] == "unreadable"
    assert "1 line(s) of results.jsonl could not be read" in (tmp_path / "report.md").read_text()
