"""The manifest defects of issue 23, one test each: before torch, the YAML text, strict typed and bounded
fields, combinations that fail every case, files and sources checked at load time, run names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from andromeda.cli import main
from andromeda.errors import ConfigError
from andromeda.runs.manifest import load_manifest, preset_names, validate

GOOD = "models: [andromeda:tiny]\nscenarios:\n  - {scenario: latency, batch: [1], seq_len: [16]}\n"


def _cli(tmp_path, content: str | bytes) -> str:
    """Run `andromeda run FILE`: assert exit 2 and one line without a traceback; return the line."""
    p = tmp_path / "m.yml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        code = main(["run", str(p), "--out", str(tmp_path / "out")])
    except SystemExit as e:
        code = e.code
    return code


def _err(tmp_path, capsys, content: str | bytes) -> str:
    code = _cli(tmp_path, content)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- before torch ----------------------------------------------------------------------------------
_NO_TORCH = textwrap.dedent('''
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    from andromeda.runs.manifest import load_manifest, preset_names
    for name in preset_names():
        m = load_manifest(preset=name, resolve=False)
        assert m.scenarios and m.models, name
        if not any(s.startswith("hf:") for s in m.models):  # andromeda: configs are checked without torch
            load_manifest(preset=name)
    m = load_manifest(sys.argv[1], resolve=False)
    from andromeda.cli import main
    codes = [main(["run", path, "--out", sys.argv[4]]) for path in (*sys.argv[2:4], sys.argv[1])]
    assert "torch" not in sys.modules
    print("codes", *codes)
''')


def test_manifests_load_and_fail_without_torch(tmp_path):
    """andromeda report loads manifest.yml where torch is missing; andromeda run refuses a bad manifest
    before it imports torch."""
    good, bad, missing = tmp_path / "good.yml", tmp_path / "bad.yml", tmp_path / "missing.yml"
    good.write_text(GOOD)
    bad.write_text(GOOD + "seed: !!int abc\n")
    missing.write_text("models: [andromeda:tiny]\nscenarios: [{scenario: perplexity, data: 'npy:nope.npy'}]\n")
    r = subprocess.run([sys.executable, "-c", _NO_TORCH, str(good), str(bad), str(missing), str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "codes 2 2 2" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and "seed: !!int 'abc'" in lines[0] and "scenarios[0].data" in lines[1], r.stderr
    assert "andromeda run needs torch" in lines[2], r.stderr  # a good manifest, andromeda: models checked


def test_manifest_modules_import_no_torch():
    code = ("import sys; import andromeda.runs.manifest, andromeda.runs.plan, andromeda.sources.spec, "
            "andromeda.measure.timing_config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# ---- the YAML text ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content,fragment", [
    (b"\xff\xfe" + GOOD.encode("utf-16-le"), "not UTF-8"),
    (GOOD.encode() + b"description: caf\xe9\n", "not UTF-8 text (byte 0xe9 at line 4"),
    (b"models: " + b"[" * 1000 + b"]" * 1000 + b"\n", "nested deeper than 32 levels"),
    (GOOD + "seed: !!int abc\n", "seed: !!int 'abc' is not an integer (line 4)"),
    (b"", "the file is empty"),
    ("# just a comment\n", "the file is empty"),
    ("- a\n- b\n", "a manifest is a mapping"),
    ("42\n", "got a number"),
    (GOOD + "seed: 1\nseed: 2\n", "seed: duplicate key"),
    (GOOD + "description: !!binary aGVsbG8=\n", "description: the tag !!binary is not allowed"),
    (GOOD + "description: !!set {a, b}\n", "description: the tag !!set is not allowed"),
    (GOOD + "description: !!python/object/apply:os.system [echo pwned]\n", "the tag !!python/object/apply"),
    (GOOD + "description: !!timestamp 2024-01-01\n", "the tag !!timestamp"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "expands to more than 100,000 values"),
])
def test_yaml_failures_are_one_line(tmp_path, capsys, content, fragment):
    assert fragment in _err(tmp_path, capsys, content)


def test_core_schema_scalars():
    from andromeda.schema.strict_yaml import load

    data = load("a: 1e-4\nb: yes\nc: off\nd: 2024-01-01\ne: 0x10\nf: 1_000\ng: ~\nh: .inf\ni: 012\n", "t")
    assert data == {"a": 1e-4, "b": "yes", "c": "off", "d": "2024-01-01", "e": 16, "f": "1_000", "g": None,
                    "h": float("inf"), "i": 12}
    assert load("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", "t")["use"] == {"x": 1, "y": 3}


def test_no_code_runs_from_a_manifest(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _err(tmp_path, capsys, GOOD + f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    assert not marker.exists()


# ---- strict, bounded fields ----------------------------------------------------------------------
@pytest.mark.parametrize("extra,fragment", [
    ("timing: {warmup: 1e12}", "timing.warmup: must be an integer from 0 to 10000"),
    ("timing: {warmup: 1000000000000}", "timing.warmup: Input should be less than or equal to 10000"),
    ("timing: {warmup_s: 1e9}", "timing.warmup_s: Input should be less than or equal to 3600"),
    ("timing: {budget_s: .inf}", "timing.budget_s: must be a finite number in (0, 3600], got inf"),
    ("peak_tflops: .inf", "peak_tflops: must be a finite number"),
    ("peak_tflops: .nan", "peak_tflops: must be a finite number"),
    ("seed: 1180591620717411303424", "seed: Input should be less than or equal to 4294967295"),
    ("seed: -1", "seed: Input should be greater than or equal to 0"),
    ('seed: !!str "5"', "seed: must be an integer from 0 to 4_294_967_295, got '5'"),
    ("seed: 5.0", "seed: must be an integer"),
    ("seed: true", "seed: must be an integer"),
    ("compare: {baseline: 'andromeda:tiny', alpha: .nan}", "compare.alpha: must be a finite number in (0, 1)"),
    ("launcher: {nproc: 2, timeout_s: .inf}", "launcher.timeout_s: must be a finite number"),
])
def test_numbers_are_strict_finite_and_bounded(tmp_path, capsys, extra, fragment):
    assert fragment in _err(tmp_path, capsys, GOOD + extra + "\n")


@pytest.mark.parametrize("entry,fragment", [
    ("{scenario: latency, seq_len: [true]}",
     "scenarios[0].seq_len[0]: must be an integer from 1 to 1_048_576, got true"),
    ("{scenario: latency, batch: [1e30]}", "scenarios[0].batch[0]: must be an integer from 1 to 65536, got 1e+30"),
    ("{scenario: latency, batch: [100000]}", "scenarios[0].batch[0]: Input should be less than or equal to 65536"),
    ("{scenario: generation, use_cache: [1]}", "scenarios[0].use_cache[0]: Input should be a valid boolean"),
    ("{scenario: training, lr: [.inf]}", "scenarios[0].lr[0]: must be a finite number > 0"),
    ("{scenario: collectives, ranks: [true]}", "scenarios[0].ranks[0]: must be a positive integer or 'all'"),
])
def test_scenario_numbers_are_strict(tmp_path, capsys, entry, fragment):
    text = f"models: [andromeda:tiny]\nlauncher: {{nproc: 2}}\ndevice: cpu\nscenarios: [{entry}]\n"
    assert fragment in _err(tmp_path, capsys, text)


# ---- combinations that would fail every case --------------------------------------------------------
@pytest.mark.parametrize("entry,fragment", [
    ({"scenario": "perplexity", "seq_len": [0]}, "scenarios[0].seq_len[0]: must be an integer from 1 to 1_048_576 or "
     "'model'"),
    ({"scenario": "perplexity", "seq_len": [64], "stride": [65]}, "scenarios[0].stride[0]: 65 is more than seq_len"),
    ({"scenario": "perplexity", "seq_len": [64, 256], "stride": [None, 128]}, "scenarios[0].stride[1]"),
    ({"scenario": "teacher_student", "teacher": "andromeda:tiny", "seq_len": 32, "stride": 40},
     "scenarios[0].stride: 40 is more than seq_len (32)"),
    ({"scenario": "training", "seq_len": 1}, "scenarios[0].seq_len"),
    ({"scenario": "latency", "batch": list(range(1, 401)), "seq_len": list(range(1, 401))},
     "the sweeps plan 160,000 cases"),
])
def test_combinations_that_fail_every_case_are_refused(entry, fragment):
    with pytest.raises(ConfigError) as e:
        validate({"models": ["andromeda:tiny"], "scenarios": [entry]})
    assert fragment in str(e.value)


def test_compare_candidates_must_not_be_empty():
    with pytest.raises(ConfigError, match=r"compare\.candidates: List should have at least 1 item"):
        validate({"models": ["andromeda:tiny", "andromeda:tiny?depth=1"], "scenarios": [{"scenario": "latency"}],
                  "compare": {"baseline": "andromeda:tiny", "candidates": []}})


@pytest.mark.parametrize("name", ["../../x", "/etc/x", "a/b", "a\\b", "..", ".", ".hidden", "", "x" * 101, "a\nb"])
def test_names_that_escape_the_output_folder_are_refused(name):
    with pytest.raises(ConfigError, match=r"^manifest: name: .* is not a run name"):
        validate({"name": name, "models": ["andromeda:tiny"], "scenarios": [{"scenario": "latency"}]})


@pytest.mark.parametrize("name", ["run", "attention-full", "my run 2", "llama+andromeda", "v1.2", "ünïcode"])
def test_plain_names_are_accepted(name):
    assert validate({"name": name, "models": ["andromeda:tiny"], "scenarios": [{"scenario": "latency"}]}).name == name


# ---- files, checkpoints and sources at load time -------------------------------------------------------
def _with_data(spec: str, scenario: str = "perplexity") -> str:
    extra = ", teacher: 'andromeda:tiny'" if scenario == "teacher_student" else ""
    return f"models: [andromeda:tiny]\nscenarios: [{{scenario: {scenario}, data: '{spec}'{extra}}}]\n"


@pytest.mark.parametrize("scenario", ["perplexity", "training", "teacher_student"])
@pytest.mark.parametrize("spec,fragment", [
    ("npy:{d}/missing.npy", "does not exist"),
    ("bin:{d}/missing.bin", "does not exist"),
    ("text:{d}/missing.txt", "does not exist"),
    ("datasets:{d}/missing", "datasets"),
    ("npy:{d}/plain.txt", "is not a .npy file"),
    ("bin:{d}/odd.bin", "not a whole number (>= 1) of uint16 tokens"),
    ("text:{d}/empty", "no .txt or .md files"),
])
def test_data_paths_are_checked_at_load_time(tmp_path, capsys, scenario, spec, fragment):
    (tmp_path / "plain.txt").write_text("hello")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    (tmp_path / "empty").mkdir()
    err = _err(tmp_path, capsys, _with_data(spec.format(d=tmp_path), scenario))
    assert "scenarios[0].data: " in err and fragment in err, err


def test_existing_data_files_pass(tmp_path):
    import numpy as np

    np.save(tmp_path / "t.npy", np.arange(64) % 200)
    (tmp_path / "t.bin").write_bytes(np.arange(64, dtype=np.uint16).tobytes())
    (tmp_path / "t.txt").write_text("some text")
    for spec in (f"npy:{tmp_path}/t.npy", f"bin:{tmp_path}/t.bin", f"text:{tmp_path}/t.txt", f"text:{tmp_path}"):
        (tmp_path / "m.yml").write_text(_with_data(spec))
        load_manifest(tmp_path / "m.yml")


def test_resolve_false_touches_no_file(tmp_path):
    (tmp_path / "m.yml").write_text(_with_data("npy:/no/such/file.npy"))
    assert load_manifest(tmp_path / "m.yml", resolve=False).scenarios[0].data == "npy:/no/such/file.npy"
    with pytest.raises(ConfigError, match="does not exist"):
        load_manifest(tmp_path / "m.yml")


def _ckpt(d, weights=True, config=True):
    d.mkdir()
    if config:
        (d / "config.json").write_text(json.dumps({"dim": 64}))
    if weights:
        (d / "model.safetensors").write_bytes(b"")
    return d


@pytest.mark.parametrize("kind,fragment", [
    ("missing", "checkpoint directory '{p}' does not exist"),
    ("no-config", "has no config.json"),
    ("no-weights", "has no weights"),
])
def test_teacher_checkpoint_is_checked_at_load_time(tmp_path, capsys, kind, fragment):
    p = tmp_path / "ck"
    if kind != "missing":
        _ckpt(p, weights=kind != "no-weights", config=kind != "no-config")
    text = ("models: [andromeda:tiny]\nscenarios: [{scenario: teacher_student, "
            f"teacher: {{source: 'andromeda:tiny', checkpoint: '{p}'}}}}]\n")
    err = _err(tmp_path, capsys, text)
    assert "scenarios[0].teacher.checkpoint: " in err and fragment.format(p=p) in err, err


@pytest.mark.parametrize("kind", ["missing", "empty", "no-weights"])
def test_local_model_directories_are_checked_at_load_time(tmp_path, capsys, kind):
    hf, ad = tmp_path / "hf", tmp_path / "ad"
    if kind != "missing":
        hf.mkdir()
        ad.mkdir()
    if kind == "no-weights":
        (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (ad / "config.json").write_text(json.dumps({"dim": 64}))
    for src in (f"hf:{hf}", f"andromeda:{ad}"):
        err = _err(tmp_path, capsys, f"models: ['{src}']\nscenarios: [{{scenario: latency}}]\n")
        assert err.startswith("error: ") and "models[0]: " in err, err
        assert {"missing": "does not exist", "empty": "no config.json", "no-weights": "weights"}[kind] in err, err


def test_hf_unknown_model_type_is_one_short_line_with_a_suggestion(tmp_path, capsys):
    pytest.importorskip("transformers")
    err = _err(tmp_path, capsys, "models: ['hf:gpt3']\nscenarios: [{scenario: latency}]\n")
    assert "models[0]: 'hf:gpt3'" in err and "did you mean" in err and "'gpt2'" in err and len(err) < 400, err


def test_hf_config_keys_are_checked_with_a_suggestion(tmp_path, capsys):
    pytest.importorskip("transformers")
    err = _err(tmp_path, capsys, "models: ['hf:gpt2?n_layr=2']\nscenarios: [{scenario: latency}]\n")
    assert "n_layr is not a field of GPT2Config (did you mean 'n_layer'?)" in err, err
    err = _err(tmp_path, capsys, "models: ['hf:llama?num_hidden_layers=abc']\nscenarios: [{scenario: latency}]\n")
    assert "models[0]: " in err and "num_hidden_layers" in err, err
    err = _err(tmp_path, capsys, "models: ['hf:t5']\nscenarios: [{scenario: latency}]\n")
    assert "no causal LM for model type 't5'" in err, err
    # the keys transformers takes (an alias, a legacy key it folds into another field) pass
    from andromeda.sources.spec import check_source

    check_source("hf:gpt2?hidden_size=64&n_layer=2&n_head=2")
    check_source("hf:matched:tiny?max_seq_len=1024&rope_theta=5000")


def test_missing_transformers_names_the_extra(monkeypatch):
    import builtins

    from andromeda.sources import spec

    real = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("no transformers")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(Exception, match=r"pip install 'andromeda\[hf\]'"):
        spec.check_source("hf:gpt2")


def test_andromeda_sources_still_say_did_you_mean(tmp_path, capsys):
    err = _err(tmp_path, capsys, "models: ['andromeda:tiny?depht=2']\nscenarios: [{scenario: latency}]\n")
    assert "models[0]: model.depht: unknown config field (did you mean 'depth'?)" in err


# ---- what stays the same ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves_and_round_trips(name, tmp_path):
    """Every preset passes every check; the manifest.yml a run writes (runner: safe_dump of model_dump) reads
    back to the same manifest."""
    m = load_manifest(preset=name)
    text = yaml.safe_dump(m.model_dump(mode="json", by_alias=True), sort_keys=False)
    (tmp_path / "manifest.yml").write_text(text)
    assert load_manifest(tmp_path / "manifest.yml", resolve=False) == m
    from andromeda.runs.manifest import dump_manifest

    (tmp_path / "manifest.yml").write_text(dump_manifest(m))
    assert load_manifest(tmp_path / "manifest.yml", resolve=False) == m


def test_dump_manifest_round_trips_strings_that_look_like_numbers(tmp_path):
    from andromeda.runs.manifest import dump_manifest

    m = validate({"name": "1e5", "description": "yes", "models": ["andromeda:tiny"], "out": "0o17",
                  "scenarios": [{"scenario": "latency"}]})
    (tmp_path / "manifest.yml").write_text(dump_manifest(m))
    assert load_manifest(tmp_path / "manifest.yml", resolve=False) == m
    assert yaml.safe_load(dump_manifest(m))["name"] == "1e5"


def test_config_copies_match_the_modules_they_mirror():
    """Torch-free copies of constants whose home modules import torch."""
    from andromeda.diagnostics import gradients, inputs
    from andromeda.model import checkpoint
    from andromeda.scenarios.attention import impls as attention_impls
    from andromeda.scenarios.attention import sparsity
    from andromeda.scenarios.config import attention, diagnostics
    from andromeda.sources import spec

    assert attention.IMPLS == attention_impls.IMPLS and attention.PATTERNS == sparsity.PATTERNS
    assert diagnostics.CLASSES == inputs.CLASSES and diagnostics.NOISE_KINDS == inputs.NOISE_KINDS
    g = gradients.GradThresholds()
    assert diagnostics.GRAD_THRESHOLDS == {k: getattr(g, k) for k in diagnostics.GRAD_THRESHOLDS}
    assert spec.CHECKPOINT_CONFIG == checkpoint.CONFIG and checkpoint.WEIGHTS in spec.CHECKPOINT_WEIGHTS
    assert spec.CHECKPOINT_EMBEDDING == checkpoint.EMBEDDING


def test_every_config_has_its_run_code():
    from andromeda import scenarios

    runners = scenarios.load_all()
    assert set(runners) == set(scenarios.names())
    for name in scenarios.names():
        assert scenarios.get(name).Config is scenarios.config.get_config(name)


def test_andromeda_model_keys_are_checked_without_torch(tmp_path):
    """A misspelled field of an andromeda: source is one line with a did-you-mean, before torch loads."""
    bad = tmp_path / "bad.yml"
    bad.write_text("models: ['andromeda:tiny?dpth=2']\nscenarios: [{scenario: latency}]\n")
    code = _NO_TORCH.split("from andromeda.runs.manifest")[0] + textwrap.dedent('''
        from andromeda.cli import main
        print("code", main(["run", sys.argv[1], "--out", sys.argv[2]]))
        assert "torch" not in sys.modules
    ''')
    r = subprocess.run([sys.executable, "-c", code, str(bad), str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "code 2" in r.stdout, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "models[0]" in lines[0] and "depth" in lines[0], r.stderr
