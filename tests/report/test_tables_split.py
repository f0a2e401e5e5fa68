"""Scenarios with kinds of records get one table per kind instead of one wide, mostly empty table."""

from andromeda.records import Record
from andromeda.report.tables import scenario_tables


def _rec(scenario, params, metrics, i):
    return Record(case_id=f"c{i}", scenario=scenario, source="andromeda:tiny", params=params, status="ok",
                  metrics=metrics)


def test_training_splits_per_step_records_from_the_summary():
    recs = [_rec("training", {"step": s}, {"loss": 3.0 - s / 10, "tokens_per_s": 100.0}, s) for s in (10, 20)]
    recs.append(_rec("training", {"step": 20, "final": True}, {"val_ppl": 5.7, "floor_ppl": 5.5}, 9))
    per_step, summary = scenario_tables("training", recs)
    assert (per_step.title, summary.title) == ("training: per logged step", "training: summary")
    assert {c.key for c in per_step.columns} >= {"metrics.loss", "metrics.tokens_per_s"}
    assert "metrics.val_ppl" not in {c.key for c in per_step.columns} and len(per_step.rows) == 2
    assert {c.key for c in summary.columns} >= {"metrics.val_ppl", "metrics.floor_ppl"}
    assert "metrics.loss" not in {c.key for c in summary.columns} and len(summary.rows) == 1


def test_diagnostics_one_table_per_probe_and_other_scenarios_one_table():
    recs = [_rec("diagnostics", {"probe": "activations"}, {"act_rms": 1.0}, 1),
            _rec("diagnostics", {"probe": "gradients"}, {"grad_norm": 2.0}, 2)]
    tables = scenario_tables("diagnostics", recs)
    assert [t.title for t in tables] == ["diagnostics: activations", "diagnostics: gradients"]
    assert len({t.label for t in tables}) == 2
    lat = [_rec("latency", {"batch": b}, {"latency_ms": 1.0}, b) for b in (1, 2)]
    assert [t.title for t in scenario_tables("latency", lat)] == ["latency"]
