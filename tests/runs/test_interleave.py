"""Comparisons in one manifest run their sides case by case (ABAB...), each model built once."""

from andromeda.records import RecordStore
from andromeda.runs.manifest import validate
from andromeda.runs.plan import plan
from andromeda.runs.runner import run
from andromeda.sources import models

A, B, C = "andromeda:tiny", "andromeda:tiny?depth=1", "andromeda:tiny?dim=32"
LATENCY = {"scenario": "latency", "mode": ["forward"], "seq_len": [16, 32]}


def _order(manifest):
    return [(c.source, c.scenario, c.params.get("seq_len")) for c in plan(manifest)]


def test_without_compare_the_plan_runs_model_by_model():
    m = validate({"models": [A, B], "scenarios": [LATENCY]})
    assert _order(m) == [(A, "latency", 16), (A, "latency", 32), (B, "latency", 16), (B, "latency", 32)]


def test_compare_interleaves_baseline_and_candidates_point_by_point():
    m = validate({"models": [A, B, C], "scenarios": [LATENCY, {"scenario": "memory", "seq_len": [8]}],
                  "compare": {"baseline": B, "allow_mismatch": True}})
    assert _order(m) == [
        (B, "latency", 16), (A, "latency", 16), (C, "latency", 16),
        (B, "latency", 32), (A, "latency", 32), (C, "latency", 32),
        (B, "memory", 8), (A, "memory", 8), (C, "memory", 8),
    ]
    unordered = validate({"models": [A, B, C], "scenarios": [LATENCY]})
    assert sorted(c.case_id for c in plan(m) if c.scenario == "latency") == sorted(c.case_id for c in plan(unordered))


def test_several_comparisons_keep_each_baseline_next_to_its_candidate():
    m = validate({"models": [A, B, C, "andromeda:tiny?heads=2"], "scenarios": [{**LATENCY, "seq_len": [16]}],
                  "compare": [{"baseline": A, "candidates": [C], "allow_mismatch": True},
                              {"baseline": B, "candidates": ["andromeda:tiny?heads=2"], "allow_mismatch": True}]})
    assert [s for s, *_ in _order(m)] == [A, C, B, "andromeda:tiny?heads=2"]


def test_interleaved_run_builds_each_model_once_and_writes_abab(tmp_path, monkeypatch):
    built = []
    real = models.build

    def counting(source, *a, **kw):
        built.append(source)
        return real(source, *a, **kw)

    monkeypatch.setattr(models, "build", counting)
    m = validate({"models": [A, B], "device": "cpu", "report": {"formats": ["csv"]},
                  "timing": {"warmup": 0, "min_runs": 2, "max_runs": 2, "budget_s": 0.01},
                  "scenarios": [{"scenario": "latency", "mode": ["forward"], "seq_len": [8, 16, 24]}],
                  "compare": {"baseline": A, "allow_mismatch": True}})
    result = run(m, tmp_path / "run")
    assert result.exit_code == 0 and sorted(built) == [A, B]
    records = RecordStore(tmp_path / "run" / "results.jsonl").read()
    assert [(r.source, r.params["seq_len"]) for r in records] == [(A, 8), (B, 8), (A, 16), (B, 16), (A, 24), (B, 24)]
    assert all(r.status == "ok" and "load" in r.info for r in records)
