"""What a user sees: --version, help with examples, list, run summaries, training lines, presets sized for a
GPU, library output in the run's log, the progress line and the resume command after Ctrl-C."""

import importlib.metadata
import json
import shlex
import subprocess
import sys
import textwrap
from importlib import resources

import pytest
import yaml

from andromeda.cli import main
from andromeda.cli_parser import build_parser
from andromeda.cli_progress import case_description, summary_rows
from andromeda.records import RecordStore

TIMING = {"warmup": 1, "min_runs": 3, "max_runs": 5, "budget_s": 0.2, "target_rel_ci": None}


def _write(tmp_path, scenario, name="m.yml", **extra):
    m = {"name": "t", "models": ["andromeda:tiny"], "device": "cpu", "timing": TIMING,
         "report": {"formats": ["csv"]}, "scenarios": [scenario], **extra}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(m))
    return p


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"andromeda {importlib.metadata.version('andromeda')}"


def _subparsers():
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return parser, sub.choices


def test_every_argument_has_help_and_every_command_an_example():
    parser, commands = _subparsers()
    assert set(commands) >= {"run", "profile", "train", "report", "compare", "claims", "list", "schema", "demo"}
    for name, p in [("andromeda", parser), *commands.items()]:
        for a in p._actions:
            if a.__class__.__name__ in ("_HelpAction", "_VersionAction", "_SubParsersAction"):
                continue
            assert a.help and a.help.strip(), f"{name} {a.option_strings or a.dest} has no help"
        if name != "andromeda":
            text = p.format_help()
            assert "examples:" in text and f"  andromeda {name}" in text, name
            assert "exit codes:" in text, name


def test_list_shows_hf_and_each_presets_description_uncut_when_piped():
    r = subprocess.run([sys.executable, "-m", "andromeda.cli", "list"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "(extra [hf])" in out and "(extra [xt])" in out  # rich markup would swallow the brackets
    assert max(len(line) for line in out.splitlines()) > 80  # a pipe is not an 80-column terminal
    presets = resources.files("andromeda.runs.presets")
    for f in presets.iterdir():
        if not f.name.endswith(".yml"):
            continue
        data = yaml.safe_load(f.read_text())
        row = next(line for line in out.splitlines() if f" {data['name']} " in line and "run preset" in line)
        assert data["description"][:60] in row, (data["name"], row)
        assert ("[GPU" if data["sized_for"] == "gpu" else "[CPU]") in row
        assert f"andromeda run --preset {data['name']}" not in out


def test_every_preset_says_what_device_it_is_sized_for():
    presets = resources.files("andromeda.runs.presets")
    data = {f.name[:-4]: yaml.safe_load(f.read_text()) for f in presets.iterdir() if f.name.endswith(".yml")}
    for name, d in data.items():
        assert d.get("sized_for") in ("cpu", "gpu"), name
        if d["sized_for"] == "gpu":
            assert data[d["cpu_counterpart"]]["sized_for"] == "cpu", name
    assert data["full"]["sized_for"] == "gpu" and data["quick"]["sized_for"] == "cpu"


@pytest.mark.parametrize("argv,counterpart", [
    (["run", "--preset", "full"], "--preset quick"),
    (["train", "--preset", "train-gpu"], "--preset train-quick"),
    (["profile", "attention", "--full"], "--preset attention-quick"),
])
def test_a_gpu_sized_preset_on_a_cpu_asks_for_force(tmp_path, capsys, argv, counterpart):
    out = tmp_path / "run"
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert counterpart in lines[0] and "--force" in lines[0] and "sized for a GPU" in lines[0]
    assert not out.exists()  # refused before anything was written


def test_summary_counts_cases_and_records_apart(tmp_path, monkeypatch):
    from andromeda.runs.runner import run
    from andromeda.scenarios import latency

    def three_records(self, bundle, p, ctx):  # one case, three records (as a training case writes one per step)
        return [ctx.record({"latency_ms": 1.0 + i}, params={"part": i}) for i in range(3)]

    monkeypatch.setattr(latency.Latency, "run", three_records)
    from andromeda.runs.manifest import load_manifest

    m = load_manifest(_write(tmp_path, {"scenario": "latency", "batch": [1], "seq_len": [8, 16]}))
    result = run(m, tmp_path / "run")
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert summary_rows(result) == [("cases", "2", "2", "0", "0", "0", "0"), ("records", "6", "6", "0", "0", "0", "0")]


def test_train_prints_a_line_per_log_interval_and_the_final_losses(tmp_path, capsys):
    p = _write(tmp_path, {"scenario": "training", "data": "synthetic:markov?n_symbols=16&successors=4", "steps": 6,
                          "batch": 2, "seq_len": 16, "log_every": 2, "eval_every": 0, "warmup_steps": 1,
                          "eval_max_tokens": 256})
    out = tmp_path / "run"
    assert main(["train", str(p), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    steps = [line for line in printed.err.splitlines() if line.startswith("step ") and "tokens/s" in line]
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"]
    records = RecordStore(out / "results.jsonl").read()
    by_step = {r.params["step"]: r.metrics for r in records if not r.params.get("final")}
    for line in steps:  # the printed loss is the mean over the steps since the last line, as the records hold it
        step = int(line.split()[1].split("/")[0])
        assert f"loss {by_step[step]['loss']:.4f}" in line
        assert "tokens/s" in line and "ETA" in line
    assert steps[-1].endswith("ETA 0:00")
    final = next(r.metrics for r in records if r.params.get("final"))
    summary = [line for line in printed.out.splitlines() if line.startswith("andromeda:tiny: final train loss")]
    assert len(summary) == 1
    assert f"val perplexity {final['val_ppl']:.4g} (floor {final['floor_ppl']:.4g}" in summary[0]
    assert "bits/byte" in summary[0]


def test_the_progress_line_shows_what_is_swept_first():
    params = {"runs": 3, "cache_group_size": 64, "cache_window": 0, "prompt_len": 32, "gen_len": 8, "batch": 1,
              "use_cache": True, "cache": "full", "cuda_graph": False, "decode_kernels": "auto"}
    text = case_description("andromeda:tiny", "generation", params)
    assert text.startswith("andromeda:tiny generation prompt_len=32 gen_len=8 batch=1 use_cache=True")


def test_ctrl_c_prints_the_command_that_resumes(tmp_path, monkeypatch, capsys):
    from andromeda.runs import runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    p = _write(tmp_path, {"scenario": "latency", "batch": [1], "seq_len": [8]}, name="my manifest.yml")
    out = tmp_path / "run"
    assert main(["run", str(p), "--set", "timing.budget_s=0.5", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "..." not in err
    command = err.split("finish with: ")[1].strip()
    argv = shlex.split(command)
    assert argv[:2] == ["andromeda", "run"]
    args = build_parser().parse_args(argv[1:])  # it parses back to the same run
    assert (args.manifest, args.set, args.out, args.resume) == (str(p), ["timing.budget_s=0.5"], str(out), True)


LOG_SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    from andromeda.scenarios import latency
    original = latency.Latency.run
    def noisy(self, bundle, p, ctx):
        warnings.warn("planted library FutureWarning", FutureWarning)
        os.write(2, b"planted C++ message on fd 2\\n")
        return original(self, bundle, p, ctx)
    latency.Latency.run = noisy
    from andromeda.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_library_warnings_go_to_the_runs_log_not_the_terminal(tmp_path):
    p = _write(tmp_path, {"scenario": "latency", "batch": [1], "seq_len": [8]})
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", LOG_SCRIPT, "run", str(p), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "planted" not in r.stdout + r.stderr
    log = (out / "run.log").read_text()
    assert "planted library FutureWarning" in log and "planted C++ message on fd 2" in log
    assert f"line(s) in {out / 'run.log'}" in r.stdout + r.stderr  # the user is told where they went
    assert "report:" in r.stdout and json.loads((out / "facts.json").read_text())
