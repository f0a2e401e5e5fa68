"""Every artifact of build_report exists, parses, and holds the measured values of the JSONL."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from collections import Counter

import pytest

from andromeda.errors import AndromedaError
from andromeda.records import STATUSES, RecordStore
from andromeda.report import FORMATS, build_report

FIXED = ["case_id", "scenario", "source", "status", "message"]
CHARTED = {
    "latency": ["latency_vs_seq_len"],
    "throughput": ["throughput_vs_batch"],
    "generation": ["generation_decode_by_position", "generation_cache"],
    "memory": ["memory_vs_seq_len"],
    "scaling": ["scaling_seq_len", "scaling_batch"],
}


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ordered(recs, group):
    return list(dict.fromkeys(k for r in recs for k in getattr(r, group)))


def _by_scenario(records):
    out = {}
    for r in records:
        out.setdefault(r.scenario, []).append(r)
    return out


def test_every_format_written(built):
    run_dir, written = built
    assert set(written) == set(FORMATS)
    for paths in written.values():
        assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    for name in ("report.json", "report.md", "report.html", "tables.tex"):
        assert (run_dir / name).is_file()


def test_csv_columns_and_values(built, records):
    run_dir, _ = built
    for scenario, recs in _by_scenario(records).items():
        with open(run_dir / "csv" / f"{scenario}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys())
        expected = (
            FIXED
            + [f"params.{k}" for k in _ordered(recs, "params")]
            + [f"metrics.{k}" for k in _ordered(recs, "metrics")]
            + [f"info.{k}" for k in _ordered(recs, "info")]
        )
        assert header == expected
        assert [row["case_id"] for row in rows] == [r.case_id for r in recs]
        for row, r in zip(rows, recs, strict=True):
            assert row["status"] == r.status and row["source"] == r.source
            assert row["message"] == (r.message or "")
            for k, v in r.params.items():
                assert row[f"params.{k}"] == str(v)
            for k in _ordered(recs, "metrics"):
                v = r.metrics.get(k)
                if finite(v):
                    assert float(row[f"metrics.{k}"]) == v, (scenario, k)  # exact, not rounded
                else:
                    assert row[f"metrics.{k}"] == ""


def test_report_json(built, records):
    run_dir, _ = built
    data = json.loads((run_dir / "report.json").read_text())
    assert {"env", "summary", "records", "warnings"} <= set(data)
    assert data["env"]["device"] == "NVIDIA H100 80GB HBM3"
    assert data["summary"]["total"] == len(records)
    assert data["summary"]["by_status"] == {s: sum(r.status == s for r in records) for s in STATUSES}
    assert data["summary"]["by_scenario"]["throughput"]["oom"] == 1
    assert len(data["records"]) == len(records)
    for got, r in zip(data["records"], records, strict=True):
        assert got["case_id"] == r.case_id and got["status"] == r.status
        assert got["metrics"] == r.metrics and got["samples"] == r.samples
    kinds = Counter(w["kind"] for w in data["warnings"])
    assert kinds["noisy"] == 1 and kinds["flagged"] == 1 and kinds["missing"] == 2
    noisy = next(w for w in data["warnings"] if w["kind"] == "noisy")
    expected = next(r for r in records if r.metrics.get("latency_ms_cv", 0) > 0.1)
    assert noisy["case_id"] == expected.case_id and "latency_ms_cv" in noisy["message"]


_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:\\times10\^\{-?\d+\})?")


def _numbers(text):
    out = []
    for m in _NUM.findall(text):
        mant, _, exp = m.partition("\\times10^{")
        out.append(float(mant) * (10 ** int(exp.rstrip("}")) if exp else 1))
    return out


def _tex_tables(tex):
    blocks = re.findall(r"\\begin\{table\}.*?\\end\{table\}", tex, flags=re.S)
    return {re.search(r"\\label\{tab:([^}]*)\}", b).group(1): b for b in blocks}


def _named_in_caption(block, metric):
    """The caption says the metric is measured but left to the CSV: 'latency_ms_{mean, std}' or 'x_mib'."""
    caption = re.search(r"\\caption\{(.*)\}\n", block).group(1)
    caption = caption.replace("\\_", "_").replace("\\{", "{").replace("\\}", "}")
    if "Also measured" not in caption:
        return False
    listed = caption.split("Also measured", 1)[1]
    base, _, qual = metric.rpartition("_")
    return bool(re.search(rf"[ ;]{re.escape(metric)}[;.]", listed)) or bool(
        re.search(rf"{re.escape(base)}_{{[^}}]*\b{qual}\b", listed)
    )


def test_latex_structure_and_values(built, records):
    run_dir, _ = built
    tables = _tex_tables((run_dir / "tables.tex").read_text())
    groups = _by_scenario(records)
    assert set(tables) == set(groups) | {"scaling-fits"}
    for label, block in tables.items():
        scenario = label.removesuffix("-fits")
        recs = [r for r in groups[scenario] if (r.params.get("fit") is True) == label.endswith("-fits")]
        order = [
            block.index(s)
            for s in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}")
        ]
        assert order == sorted(order)
        body = block.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
        assert len(body) == len(recs)
        for line, r in zip(body, recs, strict=True):
            assert line.endswith("\\\\") and line.startswith(r.source)
            assert r.status in line
            found = _numbers(line)
            for k, v in r.metrics.items():
                if finite(v) and not _named_in_caption(block, k):  # a value is in its row, or its name
                    assert any(abs(x - v) <= 5e-4 * abs(v) for x in found), (label, k, v, line)
    assert "latency (ms) [CI]" in tables["latency"] and "(MiB)" in tables["memory"]
    assert "fwd\\_bwd" in tables["latency"]  # LaTeX-escaped text
    assert _named_in_caption(tables["latency"], "latency_ms_std")  # in the CSV, named, not in a column
    assert not _named_in_caption(tables["latency"], "latency_ms_p95")  # shown in a column
    assert _named_in_caption(tables["memory"], "peak_reserved_mib")


def test_markdown(built, records):
    run_dir, _ = built
    md = (run_dir / "report.md").read_text()
    for scenario in _by_scenario(records):
        assert f"## Scenario: {scenario}" in md
    assert "| source | status | mode | batch | seq len | latency (ms) [CI] |" in md
    assert re.search(r"^\|(:?---:?\|)+$", md, flags=re.M)
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run_dir / link).is_file(), link
    for r in records:
        if r.status != "ok":
            assert r.message in md


def test_charts_open(built):
    import matplotlib.image as mpimg

    run_dir, written = built
    names = {p.stem for p in written["png"]}
    assert names == {"summary"} | {n for ns in CHARTED.values() for n in ns}  # none for attention_kernels
    for p in written["png"]:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, p


def test_html_self_contained(built, records):
    run_dir, written = built
    html = (run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(written["png"])
    assert not re.search(r'src="(?!data:)', html) and "<script" not in html
    assert "NVIDIA H100 80GB HBM3" in html and "name: smoke" in html  # environment, manifest
    assert "latency_ms_cv = 0.1" in html and "(noisy measurement)" in html
    for r in records:
        if r.status != "ok":
            assert r.message.replace("'", "&#39;") in html


def test_formats_subset_and_bad_inputs(tmp_path, records):
    RecordStore(tmp_path / "results.jsonl").append(records[:5])
    written = build_report(tmp_path, ["csv", "tex"])
    assert set(written) == {"csv", "tex"}
    assert not (tmp_path / "charts").exists() and not (tmp_path / "report.html").exists()
    with pytest.raises(AndromedaError, match="unknown report format"):
        build_report(tmp_path, ["pdf"])
    with pytest.raises(AndromedaError, match="not found"):
        build_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AndromedaError, match="no results.jsonl"):
        build_report(empty)
    (empty / "results.jsonl").write_text("\n")
    with pytest.raises(AndromedaError, match="no records"):
        build_report(empty)


def test_report_never_imports_torch(built):
    run_dir, _ = built
    code = (
        "import sys; from pathlib import Path; import andromeda.report as r; "
        "r.build_report(Path(sys.argv[1])); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(run_dir)], check=True)
    subprocess.run(
        [sys.executable, "-c", "import andromeda.report, sys; assert 'torch' not in sys.modules"], check=True
    )
