"""A manifest's compare: section: validation, and the built-in compare preset end to end."""

import json

import pytest

from andromeda.cli import main
from andromeda.errors import ConfigError
from andromeda.runs.manifest import validate

BASE = {"models": ["andromeda:tiny", "andromeda:tiny?depth=1"], "scenarios": [{"scenario": "latency"}]}


@pytest.mark.parametrize("compare,fragment", [
    ({"baseline": "andromeda:small"}, "compare.baseline"),
    ({"baseline": "andromeda:tiny", "candidates": ["andromeda:tiny"]}, "compare.candidates[0]"),
    ({"baseline": "andromeda:tiny", "metrics": ["vibes"]}, "compare.metrics[0]"),
    ({"baseline": "andromeda:tiny", "thresholds": {"speedup": 0.9}}, "compare.thresholds.speedup"),
    ({"baseline": "andromeda:tiny", "correction": "bonferroni"}, "compare.correction"),
    ({"baseline": "andromeda:tiny", "verdict": "yes"}, "compare.verdict: unknown field"),
])
def test_compare_section_errors_name_the_field(compare, fragment):
    with pytest.raises(ConfigError) as e:
        validate({**BASE, "compare": compare})
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_compare_preset_runs_with_verdicts(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    out = tmp_path / "run"
    code = main(["run", "--preset", "compare", "--device", "cpu", "--out", str(out),
                 "--set", "scenarios.0.mode=[forward]", "--set", "scenarios.0.batch=[1]",
                 "--set", "scenarios.0.seq_len=[64]", "--set", "timing.min_runs=10"])
    printed = capsys.readouterr().out
    # a comparison of models: faster / slower per candidate, never a gate's FAIL or "regressions"
    assert "comparison:" in printed and "verdict vs andromeda:tiny: " in printed
    assert "FAIL" not in printed and "PASS" not in printed and "regression" not in printed
    data = json.loads((out / "compare" / "compare.json").read_text())
    assert code == data["exit_code"] == 0 and data["kind"] == "models"
    assert {c["candidate"] for c in data["by_candidate"]} == {"hf:matched:tiny", "xt:tiny",
                                                              "andromeda:tiny?compile=default"}
    assert all(c["word"] in ("faster", "slower") and c["n"] == 1 for c in data["by_candidate"])
    comps = data["comparisons"]
    candidates = {c["candidate_label"] for c in comps}
    assert candidates == {"hf:matched:tiny", "xt:tiny", "andromeda:tiny?compile=default"}
    for c in comps:  # every comparison has a verdict with its reason, a ratio and its CI
        assert c["verdict"] and c["reason"] and c["ratio_ci_low"] <= c["ratio"] <= c["ratio_ci_high"]
    for name in ("compare.md", "compare.html", "compare.tex", "compare.png"):
        assert (out / "compare" / name).stat().st_size > 0


def test_several_baselines_each_get_their_comparison(tmp_path):
    from andromeda.api import compare_run
    from andromeda.runs.runner import run

    models = ["andromeda:tiny", "andromeda:tiny?depth=1", "andromeda:tiny?dim=32", "andromeda:tiny?dim=32&depth=1"]
    with pytest.raises(ConfigError, match=r"compare\[1\]\.baseline"):
        validate({**BASE, "compare": [{"baseline": "andromeda:tiny"}, {"baseline": "andromeda:nope"}]})
    m = validate({"models": models, "device": "cpu", "report": {"formats": ["csv"]},
                  "timing": {"warmup": 1, "min_runs": 8, "max_runs": 8, "budget_s": 0.1},
                  "scenarios": [{"scenario": "latency", "seq_len": [32]}],
                  "compare": [{"baseline": models[0], "candidates": [models[1]], "allow_mismatch": True},
                              {"baseline": models[2], "candidates": [models[3]], "allow_mismatch": True}]})
    run(m, tmp_path / "run")
    done = compare_run(tmp_path / "run", m)
    assert len(done) == 2
    dirs = [tmp_path / "run" / "compare" / "1-andromeda-tiny", tmp_path / "run" / "compare" / "2-andromeda-tiny-dim-32"]
    for i, c in enumerate(done):
        data = json.loads((dirs[i] / "compare.json").read_text())
        assert {x["candidate_label"] for x in data["comparisons"]} == {models[2 * i + 1]}
        assert c.error is None and [x.candidate_label for x in c.result.comparisons] == [models[2 * i + 1]]
    # a baseline without ok records: that comparison reports why, the other is still made
    recs = [line for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()
            if models[0] + '"' not in line]
    (tmp_path / "run" / "results.jsonl").write_text("\n".join(recs) + "\n")
    first, second = compare_run(tmp_path / "run", m)
    assert first.result is None and "no ok records" in first.error
    assert second.result is not None and second.error is None
