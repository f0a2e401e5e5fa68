"""generation: whole generations are repeated as latency repeats a call (min_runs, stable medians, budget,
max_runs) or exactly `runs` times; counted, never timed against a tolerance."""

import yaml

from andromeda.measure.timing_config import TimingConfig
from andromeda.scenarios.generation import repeat_generations


def _fake(values):
    """A generate_once whose prefill (index 0) and end-to-end time (index 5) follow `values`; counts its calls."""
    calls = []

    def once():
        v = values(len(calls))
        calls.append(v)
        return (v, v, [v], 0, None, 2 * v)

    return once, calls


def test_exactly_runs_after_the_warm_up():
    once, calls = _fake(lambda i: 1.0 + i)
    runs, stopped = repeat_generations(once, TimingConfig(warmup=3, min_runs=5, max_runs=9), runs=2)
    assert (len(runs), stopped, len(calls)) == (2, "runs", 5)  # 3 warm-up + 2 measured
    assert [r[0] for r in runs] == [4.0, 5.0]  # the warm-up generations are not kept


def test_identical_generations_are_stable_at_min_runs():
    once, calls = _fake(lambda i: 7.0)
    runs, stopped = repeat_generations(once, TimingConfig(warmup=0, min_runs=6, max_runs=50, budget_s=3600.0,
                                                          target_rel_ci=0.01), runs=None)
    assert (len(runs), stopped, len(calls)) == (6, "stable", 7)  # at least one warm-up, even with warmup 0


def test_spread_generations_run_to_max_runs_or_the_budget():
    spread = lambda i: float((i * 7919) % 13 + 1)  # noqa: E731 - widely spread, never stable within 1%
    once, _ = _fake(spread)
    runs, stopped = repeat_generations(once, TimingConfig(warmup=1, min_runs=3, max_runs=12, budget_s=3600.0,
                                                          target_rel_ci=0.01), runs=None)
    assert (len(runs), stopped) == (12, "max_runs")
    once, _ = _fake(spread)
    runs, stopped = repeat_generations(once, TimingConfig(warmup=1, min_runs=4, max_runs=1000, budget_s=1e-9,
                                                          target_rel_ci=None), runs=None)
    assert (len(runs), stopped) == (4, "budget")  # the budget is spent by the first measured run


def test_the_scenario_records_how_many_generations_and_why_it_stopped(tmp_path):
    from andromeda.records import RecordStore
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.runner import run

    m = {"name": "g", "models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
         "timing": {"warmup": 1, "min_runs": 4, "max_runs": 7, "budget_s": 3600.0, "target_rel_ci": None},
         "scenarios": [{"scenario": "generation", "prompt_len": [8], "gen_len": [3]},
                       {"scenario": "generation", "prompt_len": [8], "gen_len": [3], "runs": 2}]}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(m))
    run(load_manifest(tmp_path / "m.yml"), tmp_path / "run")
    timed, fixed = RecordStore(tmp_path / "run" / "results.jsonl").read()
    assert (timed.info["runs"], timed.info["stopped"], len(timed.samples["prefill_ms"])) == (7, "max_runs", 7)
    assert len(timed.samples["tpot_ms"]) == 7 * 2  # gen_len - 1 steps per generation
    assert (fixed.info["runs"], fixed.info["stopped"], len(fixed.samples["prefill_ms"])) == (2, "runs", 2)
