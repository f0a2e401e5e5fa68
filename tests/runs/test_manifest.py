"""Manifests: presets validate; malformed ones give a one-line error naming the field, exit 2."""

import subprocess
import sys

import pytest
import yaml

from andromeda.cli import main
from andromeda.runs.manifest import load_manifest, preset_names, validate
from andromeda.runs.plan import plan

GOOD = {"models": ["andromeda:tiny"], "scenarios": [{"scenario": "latency", "batch": [1], "seq_len": [16]}]}


def _with(**changes):
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    d.update(changes)
    return d


def _scen(**kw):
    return _with(scenarios=[{"scenario": "latency", **kw}])


# (manifest text or dict, a fragment the one-line error must contain)
BAD = [
    (_with(models="andromeda:tiny"), "models"),
    (_with(models=[]), "models"),
    (_with(models=["tiny"]), "models[0]"),
    (_with(models=["andromeda:gigantic"]), "gigantic"),
    (_with(models=["andromeda:tiny?kv_heads=3"]), "kv_heads"),
    (_with(models=["andromeda:tiny?depht=2"]), "depht"),
    (_with(models=["onnx:model"]), "onnx"),
    (_with(scenarios=[]), "scenarios"),
    (_with(scenarios="latency"), "scenarios"),
    (_with(scenarios=[{"scenario": "warp-drive"}]), "warp-drive"),
    (_with(scenarios=[{"batch": [1]}]), "scenario"),
    (_scen(batch=[-1]), "scenarios[0].batch[0]"),
    (_scen(batch=[0]), "scenarios[0].batch[0]"),
    (_scen(batch=[]), "scenarios[0].batch"),
    (_scen(seq_len="long"), "scenarios[0].seq_len"),
    (_scen(seq_len=[1.5]), "scenarios[0].seq_len[0]"),
    (_scen(mode=["sideways"]), "scenarios[0].mode[0]"),
    (_scen(bach=[1]), "scenarios[0].bach: unknown field; allowed: scenario, mode, batch, seq_len"),
    (_with(scenarios=[{"scenario": "generation", "use_cache": ["maybe"]}]), "use_cache"),
    (_with(scenarios=[{"scenario": "scaling", "axis": "depth"}]), "scenarios[0].axis"),
    (_with(scenarios=[{"scenario": "memory", "kv_cache": "yes please"}]), "kv_cache"),
    (_with(device="tpu"), "device"),
    (_with(dtype="float8"), "dtype"),
    (_with(seed="zero"), "seed"),
    (_with(timing={"min_runs": 0}), "timing.min_runs"),
    (_with(timing={"budget_s": -1}), "timing.budget_s"),
    (_with(timing={"warmup": -2}), "timing.warmup"),
    (_with(timing={"repeats": 3}), "timing.repeats: unknown field"),
    (_with(timing=5), "timing"),
    (_with(report={"formats": ["pdf"]}), "report.formats[0]"),
    (_with(report={"formats": []}), "report.formats"),
    (_with(colour="blue"), "colour: unknown field"),
    (_with(peak_tflops=-3), "peak_tflops"),
    ("models: [andromeda:tiny\nscenarios: [", "invalid YAML at line"),
    ("- just\n- a list\n", "mapping"),
    ("", "mapping"),
]


def _write(tmp_path, content):
    p = tmp_path / "m.yml"
    p.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return p


@pytest.mark.parametrize("content,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_malformed_manifest_one_line_error(tmp_path, capsys, content, fragment):
    code = main(["run", str(_write(tmp_path, content)), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    assert fragment in err, err
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["run", "does/not/exist.yml"], "does not exist"),
    (["run", "--preset", "enormous"], "available: "),
    (["run", "--preset", "quick", "--set", "timing.budget_s"], "--set"),
    (["run", "--preset", "quick", "--set", "scenarios.9.batch=[1]"], "scenarios"),
    (["run", "--preset", "quick", "--set", "timing.budget_s=-1"], "timing.budget_s"),
])
def test_bad_cli_input(argv, fragment, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses some options itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_real_process_prints_no_traceback(tmp_path):
    p = _write(tmp_path, _scen(batch=[-1]))
    r = subprocess.run([sys.executable, "-m", "andromeda.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "batch" in r.stderr


@pytest.mark.parametrize("name", ["quick", "full", "paper"])
def test_presets_validate_and_plan(name):
    assert name in preset_names()
    m = load_manifest(preset=name)
    cases = plan(m)
    assert cases and len({c.case_id for c in cases}) == len(cases)


def test_sweep_is_cartesian_and_ids_stable():
    m = validate(_with(scenarios=[{"scenario": "latency", "mode": ["forward", "fwd_bwd"], "batch": [1, 2],
                                   "seq_len": [8, 16, 32]}]))
    cases = plan(m)
    assert len(cases) == 2 * 2 * 3
    assert {(c.params["mode"], c.params["batch"], c.params["seq_len"]) for c in cases} == {
        (mo, b, s) for mo in ("forward", "fwd_bwd") for b in (1, 2) for s in (8, 16, 32)}
    assert [c.case_id for c in plan(m)] == [c.case_id for c in cases]


def test_set_overrides_apply():
    m = load_manifest(preset="quick", overrides=["timing.budget_s=0.1", 'models=["andromeda:tiny?depth=1"]',
                                                 "compare=null"])
    assert m.timing.budget_s == 0.1 and m.models == ["andromeda:tiny?depth=1"]


def test_schema_command(capsys):
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "models" in schema["properties"] and "scenarios" in schema["properties"]
