"""The CLI's contract: exit codes (0 ok, 1 gate failed, 2 user error, 3 cases errored), documented in
--help and the README; user errors as one line on stderr, never a traceback; bugs still raise."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from andromeda.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TIMING = {"warmup": 1, "min_runs": 3, "max_runs": 5, "budget_s": 0.3, "target_rel_ci": None}


def _manifest(tmp_path, models=("andromeda:tiny",), compare=None, **scenario):
    m = {"name": "t", "models": list(models), "device": "cpu", "timing": TIMING, "report": {"formats": ["csv"]},
         "scenarios": [{"scenario": "latency", "batch": [1], **scenario}]}
    if compare:
        m["compare"] = compare
    p = tmp_path / "m.yml"
    p.write_text(yaml.safe_dump(m))
    return p


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ---- exit codes ----------------------------------------------------------------------------------
def test_oom_and_skipped_are_results_exit_0(tmp_path):
    # seq_len 512 is past the tiny model's max_seq_len: a skipped record, not an error
    assert main(["run", str(_manifest(tmp_path, seq_len=[8, 512])), "--out", str(tmp_path / "run")]) == 0


def _planted_failure(monkeypatch, when):
    from andromeda.scenarios import latency

    original = latency.Latency.run

    def run(self, bundle, p, ctx):
        if when(p):
            raise ValueError("planted failure")
        return original(self, bundle, p, ctx)

    monkeypatch.setattr(latency.Latency, "run", run)


def test_some_cases_errored_exit_3_also_after_resume(tmp_path, monkeypatch, capsys):
    _planted_failure(monkeypatch, lambda p: p["seq_len"] == 16)
    p, out = _manifest(tmp_path, seq_len=[8, 16]), tmp_path / "run"
    assert main(["run", str(p), "--out", str(out)]) == 3
    assert "1 record(s) with status error" in capsys.readouterr().err
    assert main(["run", str(p), "--out", str(out), "--resume"]) == 3  # the run still holds that error


def test_every_case_errored_exits_3(tmp_path, monkeypatch):
    from andromeda.runs import runner

    def broken(*a, **k):
        raise RuntimeError("planted: the model cannot be built")

    monkeypatch.setattr(runner.models, "build", broken)
    out = tmp_path / "run"
    assert main(["run", str(_manifest(tmp_path, seq_len=[8, 16])), "--out", str(out)]) == 3
    assert {json.loads(line)["status"] for line in (out / "results.jsonl").read_text().splitlines()} == {"error"}


def _planted_latency(monkeypatch, ms_by_source):
    """Latency samples by source (no timing): the comparison's verdict is known in advance."""
    from andromeda.scenarios import latency

    def run(self, bundle, p, ctx):
        ms = ms_by_source[ctx.case.source]
        samples = [ms * (1 + 0.01 * (i % 5)) for i in range(20)]
        return [ctx.record({"latency_ms": sorted(samples)[10]}, samples={"latency_ms": samples})]

    monkeypatch.setattr(latency.Latency, "run", run)


@pytest.mark.parametrize("candidate_ms,code", [(2.0, 1), (0.5, 0)])
def test_run_exits_1_when_its_compare_gate_fails(tmp_path, monkeypatch, capsys, candidate_ms, code):
    base, cand = "andromeda:tiny", "andromeda:tiny?depth=1"
    _planted_latency(monkeypatch, {base: 1.0, cand: candidate_ms})
    p = _manifest(tmp_path, models=(base, cand), seq_len=[8],
                  compare={"baseline": base, "metrics": ["latency_ms"], "allow_mismatch": True, "gate": True})
    assert main(["run", str(p), "--out", str(tmp_path / "run")]) == code
    verdict = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text())
    assert verdict["regressions"] == (1 if code else 0) and verdict["exit_code"] == code
    assert verdict["kind"] == "gate"
    out, err = capsys.readouterr()
    assert ("the comparison gate failed" in err) == bool(code)
    assert ("result: FAIL" if code else "result: PASS") in out


@pytest.mark.parametrize("candidate_ms,word", [(2.0, "slower"), (0.5, "faster")])
def test_a_comparison_of_models_says_faster_or_slower_and_fails_nothing(tmp_path, monkeypatch, capsys,
                                                                         candidate_ms, word):
    base, cand = "andromeda:tiny", "andromeda:tiny?depth=1"
    _planted_latency(monkeypatch, {base: 1.0, cand: candidate_ms})
    p = _manifest(tmp_path, models=(base, cand), seq_len=[8, 16],
                  compare={"baseline": base, "metrics": ["latency_ms"], "allow_mismatch": True})
    assert main(["run", str(p), "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "FAIL" not in out + err and "PASS" not in out and "regression" not in out + err
    factor = max(candidate_ms, 1 / candidate_ms)  # the planted samples are the baseline's times x candidate_ms
    assert f"verdict vs {base}: {cand} {factor:.2f}x {word} (95% CI" in out
    assert f"{word}: 2" in out  # both cases, listed under the word that says what they are
    data = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text())
    assert data["kind"] == "models" and data["exit_code"] == 0
    [summary] = data["by_candidate"]
    assert summary["n"] == 2 and summary["factor"] == pytest.approx(factor, rel=1e-9)


def test_cases_errored_wins_over_a_failed_gate(tmp_path, monkeypatch):
    base, cand = "andromeda:tiny", "andromeda:tiny?depth=1"
    _planted_latency(monkeypatch, {base: 1.0, cand: 2.0})
    _planted_failure(monkeypatch, lambda p: p["seq_len"] == 16)
    p = _manifest(tmp_path, models=(base, cand), seq_len=[8, 16], compare={"baseline": base, "allow_mismatch": True})
    assert main(["run", str(p), "--out", str(tmp_path / "run")]) == 3


def test_train_exits_3_when_its_case_errored(tmp_path, monkeypatch):
    from andromeda.scenarios import training

    def broken(self, bundle, p, ctx):
        raise ValueError("planted failure")

    monkeypatch.setattr(training.Training, "run", broken)
    m = {"name": "t", "models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
         "scenarios": [{"scenario": "training", "data": "synthetic:markov?n_symbols=16&successors=4",
                        "steps": 2, "batch": 2, "seq_len": 16}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(m))
    assert main(["train", str(tmp_path / "t.yml"), "--out", str(tmp_path / "run")]) == 3


@pytest.mark.parametrize("command", ["run", "profile attention", "train"])
def test_help_documents_every_exit_code(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes:" in text
    gate = () if command == "train" else ("1 a comparison gate",)  # train makes no comparison
    for code in ("0 every case ran", *gate, "2 a user error", "3 some cases errored"):
        assert code in text, code


@pytest.mark.parametrize("command,codes", [("compare", ("0 no significant", "1 a significant regression", "2 a user")),
                                           ("report", ("0 the report was written", "2 a user error"))])
def test_help_of_compare_and_report_says_their_codes(command, codes, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(c in text for c in codes)


def test_readme_documents_the_exit_codes():
    text = README.read_text()
    section = text[text.index("## Exit codes"):]
    section = section[: section.find("\n## ", 1)]
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\|? *`?{code}`? *\|", section, re.M), f"exit code {code} missing from the README"


# ---- user errors: one line, exit 2 -------------------------------------------------------------
def test_out_naming_an_existing_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["run", str(_manifest(tmp_path, seq_len=[8])), "--out", str(tmp_path / "taken")]) == 2
    _one_line_error(capsys, "--out", "taken", "not a directory")


def test_out_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["run", str(_manifest(tmp_path, seq_len=[8])), "--out", str(tmp_path / "taken" / "run")]) == 2
    _one_line_error(capsys, "--out", "is a file, not a directory")


def test_out_in_an_unwritable_directory(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real(p, mode, **k))
    assert main(["run", str(_manifest(tmp_path, seq_len=[8])), "--out", str(locked / "run")]) == 2
    _one_line_error(capsys, "--out", "permission denied")
    assert not (locked / "run").exists()


def test_bad_device_writes_nothing(tmp_path, capsys):
    assert main(["run", str(_manifest(tmp_path, seq_len=[8])), "--out", str(tmp_path / "run"), "--device", "gpu7"]) == 2
    _one_line_error(capsys, "gpu7")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,flag", [
    (["compare", "A", "B", "--alpha", "2"], "--alpha"),
    (["compare", "A", "B", "--alpha", "nan"], "--alpha"),
    (["compare", "A", "B", "--alpha", "0"], "--alpha"),
    (["compare", "A", "B", "--threshold", "0.5"], "--threshold"),
    (["compare", "A", "B", "--threshold", "inf"], "--threshold"),
    (["compare", "A", "B", "--memory-threshold", "-1"], "--memory-threshold"),
    (["compare", "A", "B", "--max-abs-diff", "nan"], "--max-abs-diff"),
    (["compare", "A", "B", "--seed", "-1"], "--seed"),
    (["compare", "A", "B", "--seed", "1.5"], "--seed"),
    (["claims", "--peak-tflops", "0", "--no-measure"], "--peak-tflops"),
    (["demo", "--tokens", "0"], "--tokens"),
    (["run", "--set", "seed=!!int abc"], "--set"),
    (["run", "--set", "scenarios.0.batch=[1,"], "--set"),
    (["run", "--set", "timing"], "--set"),
    (["run", "--set", "scenarios.\u00b2.batch=1"], "--set"),  # a superscript two: isdigit(), but no index
    (["run", "--set", "timing..budget_s=1"], "--set"),
    (["run", "--set", "seed=" + "[" * 3000], "--set"),  # nesting past the recursion limit
    (["train", "--set", "=1"], "--set"),
    (["run", "--nope"], "--nope"),
])
def test_out_of_range_options_are_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    _one_line_error(capsys, flag, "--help")


def test_compare_alpha_from_the_api_is_a_config_error():
    from andromeda.errors import ConfigError
    from andromeda.verdicts.comparison import compare_samples

    with pytest.raises(ConfigError, match="alpha"):
        compare_samples([1.0, 1.1], [1.0, 1.2], "latency_ms", alpha=2.0)


def _run_dir(tmp_path, lines):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


REC = {"case_id": "c1", "scenario": "latency", "source": "andromeda:tiny", "params": {"batch": 1, "seq_len": 8},
       "status": "ok", "metrics": {"latency_ms": 1.0}, "samples": {"latency_ms": [1.0, 1.1]}}


@pytest.mark.parametrize("change,field", [({"metrics": "fast"}, "'metrics'"), ({"params": 3}, "'params'"),
                                          ({"samples": {"latency_ms": "1,2"}}, "samples.latency_ms"),
                                          ({"env": []}, "'env'")])
def test_report_on_a_wrong_typed_record(tmp_path, capsys, change, field):
    run = _run_dir(tmp_path, [REC, {**REC, "case_id": "c2", **change}])
    assert main(["report", str(run)]) == 2
    _one_line_error(capsys, "line 2", field)


def test_report_that_cannot_write_its_file(tmp_path, capsys):
    run = _run_dir(tmp_path, [REC])
    (run / "report.md").mkdir()  # the report's own file name is taken by a folder
    assert main(["report", str(run), "--formats", "md"]) == 2
    _one_line_error(capsys, "report.md")


def test_a_bug_still_shows_its_traceback(tmp_path, monkeypatch):
    import andromeda.report as report

    def bug(*a, **k):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(report, "build_report", bug)
    with pytest.raises(RuntimeError, match="a genuine bug"):
        main(["report", str(_run_dir(tmp_path, [REC]))])


def test_an_os_error_in_our_own_files_is_a_bug(tmp_path, monkeypatch):
    import andromeda.report as report

    def missing_template(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", str(Path(report.__file__).parent / "x.html"))

    monkeypatch.setattr(report, "build_report", missing_template)
    with pytest.raises(FileNotFoundError):
        main(["report", str(_run_dir(tmp_path, [REC]))])


def test_report_with_a_compare_section_that_no_longer_loads(tmp_path, capsys):
    run = _run_dir(tmp_path, [REC])
    (run / "manifest.yml").write_text(yaml.safe_dump({"name": "x", "models": ["andromeda:tiny"],
                                                      "compare": {"baseline": "andromeda:tiny", "alpha": 7}}))
    assert main(["report", str(run), "--formats", "md"]) == 0  # the report is still built
    _one_line_error(capsys, "compare.alpha", "not rebuilt")
    assert (run / "report.md").exists()
