"""Fuzzed manifests: every malformed manifest gets exit 2, one line on stderr naming the field, no
traceback, before a run starts or a model is built, through the CLI entry point, in this process.

The generator starts from a valid manifest per scenario (and one with every top-level section) and
breaks one thing at a time, field by field, from each config class's own annotations: wrong types
(a string, a bool, a float, a list, a mapping where each does not belong), out-of-range and non-finite
values, empty sweeps, bad list items, unknown keys, YAML tags, duplicate keys; then whole-file damage
(encodings, nesting, aliases, sizes), missing or wrong-kind files and checkpoints, bad model sources
and combinations that would fail every case. Each case carries the fragment its error must contain: the
field path, or for damage to the file itself what is wrong with it and where.
"""

from __future__ import annotations

import json
import time
import types
import typing
from typing import Annotated, Any, Literal, Union

import pytest
import yaml

from andromeda.cli import main
from andromeda.runs import manifest as manifest_mod
from andromeda.runs.manifest import Manifest
from andromeda.scenarios import config as scenario_config
from andromeda.verdicts.compare_spec import CompareSpec, CompareThresholds

TINY_DATA = "synthetic:markov?val_docs=2&doc_len=32"
LAUNCHER = {"type": "torchrun", "nproc": 2}
# a valid, tiny entry per scenario: each case below breaks one thing in one of these
ENTRIES: dict[str, dict[str, Any]] = {
    "attention": {"impl": ["eager"], "seq_len": [32], "heads": 2, "kv_heads": 1, "head_dim": 8},
    "collectives": {"ranks": [2], "sizes_mib": [0.25], "iters": 2},
    "context_parallel": {"ranks": [2], "seq_lens": [16], "iters": 2, "check_len": 16},
    "data_parallel": {"ranks": [1], "batch": 2, "seq_len": 16, "steps": 2},
    "diagnostics": {"probe": ["params"], "seq_len": 16},
    "generation": {"prompt_len": [4], "gen_len": [4]},
    "latency": {"batch": [1], "seq_len": [16]},
    "load_balance": {"ranks": [2], "batch": 1, "seq_len": 16, "iters": 2},
    "memory": {"batch": [1], "seq_len": [16]},
    "perplexity": {"data": TINY_DATA, "seq_len": [16]},
    "scaling": {"size": [16, 32]},
    "teacher_student": {"teacher": "andromeda:tiny", "data": TINY_DATA, "seq_len": 16, "prompt_len": 4,
                        "gen_len": 2},
    "throughput": {"batch": [1], "seq_len": [16]},
    "training": {"data": TINY_DATA, "steps": 2, "batch": 2, "seq_len": 16},
}
MODELS = ["andromeda:tiny", "andromeda:tiny?depth=1"]


def base(scenario: str = "latency") -> dict[str, Any]:
    cfg = scenario_config.get_config(scenario)
    m: dict[str, Any] = {"name": "fuzz", "models": list(MODELS), "device": "cpu",
                         "scenarios": [{"scenario": scenario, **ENTRIES[scenario]}]}
    if cfg.NEEDS_LAUNCHER:
        m["launcher"] = dict(LAUNCHER)
    return m


def full_base() -> dict[str, Any]:
    """Every top-level section present, so that each of their fields can be broken."""
    return {**base(), "description": "d", "dtype": "float32", "seed": 0, "out": None, "peak_tflops": 10.0,
            "timing": {"warmup": 1, "warmup_s": 0.0, "min_runs": 2, "max_runs": 3, "budget_s": 0.1,
                       "target_rel_ci": 0.1, "flush_l2": False, "cuda_graph": False},
            "report": {"formats": ["csv"]},
            "compare": {"baseline": MODELS[0], "candidates": [MODELS[1]], "metrics": ["latency_ms"],
                        "allow_mismatch": False, "correction": "holm", "alpha": 0.05,
                        "thresholds": {"speedup": 1.2, "memory": 0.05, "max_abs_diff": 1e-5,
                                       "max_abs_diff_by_dtype": {"float32": 1e-5}}},
            "launcher": {"type": "torchrun", "nproc": 2, "nodes": 1, "rdzv_endpoint": None, "backend": "auto",
                         "timeout_s": 60.0, "cpu_threads": 1}}


# ---- wrong values, from a field's annotation --------------------------------------------------------
def _unwrap(ann: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated / Optional, whether None is allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            optional |= len(args) < len(typing.get_args(ann))
            if len(args) != 1:
                return ann, optional
            ann = args[0]
        else:
            return ann, optional


def _min_len(info: Any) -> int:
    return max([getattr(m, "min_length", 0) or 0 for m in info.metadata] + [0])


def bad_values(ann: Any, info: Any = None) -> list[tuple[str, Any]]:
    """(label, value) pairs that this annotation must refuse."""
    t, _ = _unwrap(ann)
    origin = typing.get_origin(t)
    if t is bool:
        return [("str-for-bool", "yes"), ("int-for-bool", 1)]
    if t is int:
        return [("str-for-int", "5"), ("bool-for-int", True), ("float-for-int", 2.5), ("huge", 2**70),
                ("negative", -5)]
    if t is float:
        return [("str-for-float", "abc"), ("bool-for-float", True), ("inf", float("inf")), ("nan", float("nan")),
                ("negative", -1.0)]
    if t is str:
        return [("int-for-str", 5), ("list-for-str", ["a"])]
    if origin is Literal:
        return [("not-allowed", "bogus-value"), ("int-for-literal", 12345)]
    if origin is list:
        (item,) = typing.get_args(t)
        out = [("scalar-for-list", "not-a-list")]
        if info is not None and _min_len(info) >= 1:
            out.append(("empty-list", []))
        out += [(f"item-{label}", [v]) for label, v in bad_values(item)[:2]]
        return out
    if origin is dict:
        return [("bad-key", {"float8": 1.0}), ("bad-value", {"float32": -1.0}), ("list-for-dict", [1])]
    if isinstance(t, type) and issubclass(t, manifest_mod.BaseModel):
        return [("scalar-for-section", 5), ("unknown-key-in-section", {"bogus_key": 1})]
    # unions: int | 'all' (ranks items, nproc), str | ModelRef (teacher)
    return [("mapping", {"bogus_key": 1}), ("float", 2.5)]


def field_cases(make: typing.Callable[[], dict], where: list, cls: type, path: str, skip=(),
                tag: str = "") -> list[tuple]:
    """Break each field of `cls` (found at `where` inside make()) in each way its annotation refuses."""
    out = []
    for name, info in cls.model_fields.items():
        if name in skip:
            continue
        key = info.alias or name
        for label, value in bad_values(info.annotation, info):
            if key == "scenario" and label.endswith("-for-literal"):
                continue
            m = make()
            _at(m, where)[key] = value
            out.append((f"{tag}{path}.{key}:{label}".replace("/.", "/"), m, f"{path}.{key}".lstrip(".")))
        m = make()
        _at(m, where)[key + "x"] = 1  # a misspelled key
        out.append((f"{tag}{path}.{key}x:unknown".replace("/.", "/"), m, f"{path}.{key}x: unknown field".lstrip(".")))
    return out


def _at(m: dict, where: list) -> dict:
    for part in where:
        m = m[part]
    return m


def scenario_cases() -> list[tuple]:
    out = []
    for name in scenario_config.names():
        cls = scenario_config.get_config(name)
        out += field_cases(lambda n=name: base(n), ["scenarios", 0], cls, "scenarios[0]", tag=f"{name}/")
        for ref in ("teacher",) if name == "teacher_student" else ():
            out.append((f"{name}.{ref}.source:bad", _with(base(name), ref, {"source": "onnx:x"}),
                        f"scenarios[0].{ref}.source"))
    return out


def _with(m: dict, key: str, value: Any) -> dict:
    m["scenarios"][0][key] = value
    return m


def top_cases() -> list[tuple]:
    out = field_cases(full_base, [], Manifest, "", skip=("scenarios",), tag="top/")
    sections = {"timing": manifest_mod.TimingSpec, "report": manifest_mod.ReportSpec,
                "compare": CompareSpec, "launcher": manifest_mod.LauncherSpec}
    for key, cls in sections.items():
        out += field_cases(full_base, [key], cls, key, tag="top/")
    out += field_cases(full_base, ["compare", "thresholds"], CompareThresholds, "compare.thresholds",
                       tag="top/")
    return out


# ---- YAML and file damage ---------------------------------------------------------------------------
def text_cases() -> list[tuple]:
    good = yaml.safe_dump(base())
    deep = "models: [andromeda:tiny]\nscenarios: " + "[" * 1000 + "]" * 1000 + "\n"
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    cases = [
        ("binary", bytes(range(256)) * 4, "not UTF-8"),
        ("latin-1", "name: caf\xe9\n".encode("latin-1") + good.encode(), "not UTF-8"),
        ("utf-16", good.encode("utf-16"), "not UTF-8"),
        ("nul-byte", good.encode() + b"\x00\n", "control character"),
        ("control-char", b"name: a\x07b\n" + good.encode(), "control character"),
        ("empty", b"", "empty"),
        ("only-comment", b"# nothing here\n", "empty"),
        ("top-level-list", b"- models\n- scenarios\n", "mapping"),
        ("top-level-scalar", b"just a string\n", "mapping"),
        ("top-level-number", b"42\n", "mapping"),
        ("nesting-1000", deep.encode(), "nested deeper than 32"),
        ("nesting-block", ("models: [andromeda:tiny]\nscenarios:\n" + "".join(
            "  " * i + "- \n" for i in range(1, 60))).encode(), "nested deeper than 32"),
        ("recursive-alias", b"models: &a [*a]\nscenarios: [{scenario: latency}]\n", "models"),
        ("billion-laughs", (laughs + "models: [andromeda:tiny]\nscenarios: [{scenario: latency}]\n").encode(),
         "more than 100,000 values"),
        ("two-documents", (good + "---\n" + good).encode(), "line"),
        ("unclosed-flow", b"models: [andromeda:tiny\nscenarios: [\n", "invalid YAML at line"),
        ("tab-indent", b"models:\n\t- andromeda:tiny\n", "invalid YAML at line"),
        ("bad-indent", b"models:\n  - andromeda:tiny\n - x\n", "invalid YAML at line"),
        ("unclosed-quote", b"name: 'fuzz\nmodels: [andromeda:tiny]\n", "invalid YAML at line"),
        ("undefined-alias", b"models: *nowhere\n", "invalid YAML at line"),
        ("too-big", b"# " + b"x" * (1 << 20) + b"\n" + good.encode(), "at most 1,048,576 bytes"),
        ("int-key", good.encode() + b"12: x\n", "the key 12 is not a string"),
        ("null-key", good.encode() + b"~: x\n", "the key null is not a string"),
        ("list-key", good.encode() + b"? [a, b]\n: x\n", "is not a string"),
        ("merge-scalar", b"models: [andromeda:tiny]\nscenarios: [{scenario: latency, <<: 5}]\n",
         "scenarios[0]: a '<<' merge key"),
        ("int-tag-on-text", good.encode() + b"seed: !!int abc\n", "seed: !!int 'abc'"),
        ("float-tag-on-text", good.encode() + b"peak_tflops: !!float abc\n", "peak_tflops: !!float"),
        ("bool-tag-on-text", good.encode() + b"seed: !!bool maybe\n", "seed: !!bool"),
        ("null-tag-on-text", good.encode() + b"out: !!null x\n", "out: !!null"),
        ("str-tag-number", good.encode() + b'seed: !!str "5"\n', "seed: must be an integer"),
        ("timestamp-tag", good.encode() + b"description: !!timestamp 2024-01-01\n", "description: the tag !!timestamp"),
        ("python-tag", good.encode() + b"description: !!python/object/apply:os.system [echo hi]\n",
         "description: the tag !!python/object/apply:os.system"),
        ("python-name-tag", good.encode() + b"description: !!python/name:os.system ''\n",
         "description: the tag !!python/name"),
        ("local-tag", good.encode() + b"description: !mine x\n", "description: the tag !mine"),
        ("set-tag", good.encode() + b"description: !!set {a, b}\n", "description: the tag !!set"),
        ("omap-tag", good.encode() + b"description: !!omap [a: 1]\n", "description: the tag !!omap"),
        ("binary-tag", good.encode() + b"description: !!binary aGVsbG8=\n", "description: the tag !!binary"),
        ("dup-top", good.encode() + b"seed: 1\nseed: 2\n", "seed: duplicate key"),
        ("dup-models", good.encode() + b"models: [andromeda:tiny]\n", "models: duplicate key"),
    ]
    # tags, duplicates and nesting inside each scenario entry: the field path names where
    for name in scenario_config.names():
        key = next(iter(ENTRIES[name]))
        m = base(name)
        entry = m.pop("scenarios")[0]
        body = yaml.safe_dump(m) + "scenarios:\n  - scenario: " + name + "\n"
        rest = "".join(f"    {k}: {json.dumps(v)}\n"  # JSON is YAML
                       for k, v in entry.items() if k not in ("scenario", key))
        cases += [
            (f"{name}-binary-tag", (body + f"    {key}: !!binary aGVsbG8=\n" + rest).encode(),
             f"scenarios[0].{key}: the tag !!binary"),
            (f"{name}-dup-key", (body + f"    {key}: 1\n    {key}: 2\n" + rest).encode(),
             f"scenarios[0].{key}: duplicate key"),
            (f"{name}-deep", (body + f"    {key}: " + "[" * 40 + "]" * 40 + "\n" + rest).encode(),
             f"scenarios[0].{key}"),
        ]
    return cases


# ---- files, checkpoints and model sources -------------------------------------------------------------
def file_cases(d) -> list[tuple]:
    """Paths and sources that do not exist or are of the wrong kind. `d`: a folder with prepared files."""
    def data(scn: str, spec: str) -> dict:
        return _with(base(scn), "data", spec)

    cases = []
    for scn in ("perplexity", "training", "teacher_student"):
        for label, spec in [("npy-missing", f"npy:{d}/missing.npy"), ("npy-not-npy", f"npy:{d}/notnpy.npy"),
                            ("npy-dir", f"npy:{d}/textdir"), ("bin-missing", f"bin:{d}/missing.bin"),
                            ("bin-odd-size", f"bin:{d}/odd.bin"), ("bin-empty", f"bin:{d}/empty.bin"),
                            ("text-missing", f"text:{d}/missing.txt"), ("text-empty", f"text:{d}/empty.txt"),
                            ("text-dir-without-text", f"text:{d}/emptydir"),
                            ("datasets-missing", f"datasets:{d}/missing"),
                            ("bare-unknown", f"{d}/corpus.xyz"),
                            ("synthetic-bad-option", "synthetic:markov?n_symbols=1"),
                            ("synthetic-huge", "synthetic:markov?val_docs=100000&doc_len=1048576"),
                            ("synthetic-dup-option", "synthetic:markov?seed=1&seed=2"),
                            ("unknown-option", "synthetic:markov?colour=blue")]:
            cases.append((f"{scn}.data:{label}", data(scn, spec), "scenarios[0].data"))
    ckpt = [("missing", f"{d}/nockpt"), ("no-config", f"{d}/emptydir"), ("no-weights", f"{d}/ckpt-noweights"),
            ("a-file", f"{d}/empty.txt"), ("bad-json", f"{d}/ckpt-badjson")]
    for label, path in ckpt:
        cases.append((f"teacher.checkpoint:{label}", _with(base("teacher_student"), "teacher",
                                                           {"source": "andromeda:tiny", "checkpoint": path}),
                      "scenarios[0].teacher.checkpoint"))
        cases.append((f"models.andromeda-ckpt:{label}", {**base(), "models": [f"andromeda:{path}"]}, "models[0]"))
    cases.append(("teacher.checkpoint:hf-source", _with(base("teacher_student"), "teacher",
                                                        {"source": "hf:gpt2", "checkpoint": f"{d}/ckpt"}),
                  "scenarios[0].teacher.checkpoint"))
    cases.append(("training.checkpoint_dir:a-file", _with(base("training"), "checkpoint_dir", f"{d}/empty.txt"),
                  "scenarios[0].checkpoint_dir"))
    sources = [("andromeda-unknown-preset", "andromeda:gigantic"), ("andromeda-typo", "andromeda:tiny?depht=2"),
               ("andromeda-bad-value", "andromeda:tiny?kv_heads=3"),
               ("andromeda-huge", "andromeda:tiny?depth=10000000000"),
               ("andromeda-dup-key", "andromeda:tiny?depth=1&depth=2"), ("unknown-kind", "onnx:model"),
               ("no-kind", "tiny"), ("no-name", "andromeda:"), ("bad-compile", "andromeda:tiny?compile=fastest"),
               ("hf-missing-dir", f"hf:{d}/nothere"), ("hf-empty-dir", f"hf:{d}/emptydir"),
               ("hf-no-weights", f"hf:{d}/hf-noweights"), ("hf-unknown-type", "hf:gpt3"),
               ("hf-not-causal", "hf:vit"), ("hf-typo-key", "hf:gpt2?n_layr=2"), ("hf-bad-type", "hf:gpt2?n_layer=abc"),
               ("hf-matched-typo", "hf:matched:tiny?rope_thetta=5"), ("hf-matched-no-preset", "hf:matched:"),
               ("hf-matched-unknown-preset", "hf:matched:gigantic"), ("xt-unsupported", "xt:tiny?parallel_block=true")]
    for label, src in sources:
        cases.append((f"models:{label}", {**base(), "models": [src]}, "models[0]"))
    return cases


# ---- combinations that would fail every case ----------------------------------------------------------
def combination_cases() -> list[tuple]:
    def entry(scn: str, **kw: Any) -> dict:
        m = base(scn)
        m["scenarios"][0].update(kw)
        return m

    return [
        ("perplexity-seq_len-0", entry("perplexity", seq_len=[0]), "scenarios[0].seq_len[0]"),
        ("perplexity-stride-past-window", entry("perplexity", seq_len=[16], stride=[17]), "scenarios[0].stride[0]"),
        ("perplexity-stride-past-shortest", entry("perplexity", seq_len=[16, 64], stride=[None, 32]),
         "scenarios[0].stride[1]"),
        ("teacher-stride-past-window", entry("teacher_student", seq_len=16, stride=17), "scenarios[0].stride"),
        ("teacher-seq_len-1", entry("teacher_student", seq_len=1), "scenarios[0].seq_len"),
        ("training-seq_len-1", entry("training", seq_len=1), "scenarios[0].seq_len"),
        ("training-eval-seq_len-1", entry("training", eval_seq_len=1), "scenarios[0].eval_seq_len"),
        ("attention-kv-heads", entry("attention", heads=4, kv_heads=3), "scenarios[0]: kv_heads"),
        ("attention-block-sparse-no-layout", entry("attention", pattern=["block_sparse"]), "scenarios[0].layout"),
        ("attention-layout-not-square", entry("attention", layout=[[1, 0], [1]]), "scenarios[0].layout"),
        ("attention-layout-empty-row", entry("attention", layout=[[0, 1], [1, 1]]), "scenarios[0].layout"),
        ("generation-too-long", entry("generation", prompt_len=[1 << 20], gen_len=[8]), "prompt_len + gen_len"),
        ("scaling-batch-axis-huge", entry("scaling", axis="batch", size=[1 << 20]), "scenarios[0].size[0]"),
        ("sweep-explosion", entry("latency", batch=list(range(1, 1001)), seq_len=list(range(1, 1001))),
         "scenarios: the sweeps plan"),
        ("timing-max-below-min", {**base(), "timing": {"min_runs": 10, "max_runs": 5}}, "timing.max_runs"),
        ("compare-baseline-not-a-model", {**base(), "compare": {"baseline": "andromeda:small"}}, "compare.baseline"),
        ("compare-candidates-empty", {**base(), "compare": {"baseline": MODELS[0], "candidates": []}},
         "compare.candidates"),
        ("compare-candidate-is-baseline", {**base(), "compare": {"baseline": MODELS[0], "candidates": [MODELS[0]]}},
         "compare.candidates[0]"),
        ("compare-list-second-bad", {**base(), "compare": [{"baseline": MODELS[0]}, {"baseline": "andromeda:x"}]},
         "compare[1].baseline"),
        ("compare-unknown-metric", {**base(), "compare": {"baseline": MODELS[0], "metrics": ["speediness"]}},
         "compare.metrics[0]"),
        ("launcher-missing", {k: v for k, v in base("data_parallel").items() if k != "launcher"}, "scenarios[0]"),
        ("launcher-auto-on-cpu", {**base("collectives"), "launcher": {"nproc": "auto"}}, "launcher.nproc"),
        ("launcher-nodes-no-endpoint", {**base("collectives"), "launcher": {"nproc": 2, "nodes": 2}},
         "launcher.rdzv_endpoint"),
        ("launcher-one-gpu", {**base("collectives"), "device": "cuda:1"}, "device"),
        ("launcher-checkpoint-dir", {**base("training"), "launcher": LAUNCHER} | {"scenarios": [
            {"scenario": "training", **ENTRIES["training"], "checkpoint_dir": "ck"}]}, "scenarios[0].checkpoint_dir"),
        ("name-parent", {**base(), "name": "../../x"}, "name"),
        ("name-absolute", {**base(), "name": "/tmp/x"}, "name"),
        ("name-separator", {**base(), "name": "a/b"}, "name"),
        ("name-backslash", {**base(), "name": "a\\b"}, "name"),
        ("name-dot", {**base(), "name": ".hidden"}, "name"),
        ("name-empty", {**base(), "name": ""}, "name"),
        ("name-newline", {**base(), "name": "a\nb"}, "name"),
        ("device-unknown", {**base(), "device": "tpu"}, "device"),
        ("no-scenarios", {k: v for k, v in base().items() if k != "scenarios"}, "scenarios: required"),
        ("no-models", {k: v for k, v in base().items() if k != "models"}, "models: required"),
        ("scenario-missing-name", {**base(), "scenarios": [{"batch": [1]}]}, "scenarios[0]"),
        ("teacher-missing", {**base(), "scenarios": [{"scenario": "teacher_student"}]}, "scenarios[0].teacher"),
    ]


def all_cases(d) -> list[tuple]:
    cases = []
    for cid, m, frag in scenario_cases() + top_cases() + file_cases(d) + combination_cases():
        cases.append((cid, yaml.safe_dump(m, allow_unicode=True).encode(), frag))
    return cases + text_cases()


# ---- the test ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    d = tmp_path_factory.mktemp("fuzzfiles")
    (d / "notnpy.npy").write_bytes(b"not numpy at all")
    (d / "odd.bin").write_bytes(b"\x01\x02\x03")
    (d / "empty.bin").write_bytes(b"")
    (d / "empty.txt").write_text("")
    (d / "emptydir").mkdir()
    (d / "textdir").mkdir()
    (d / "textdir" / "a.txt").write_text("hello")
    np.save(d / "tokens.npy", np.arange(100))
    (d / "ckpt-noweights").mkdir()
    (d / "ckpt-noweights" / "config.json").write_text(json.dumps({"dim": 64}))
    (d / "ckpt-badjson").mkdir()
    (d / "ckpt-badjson" / "config.json").write_text("{not json")
    (d / "ckpt-badjson" / "model.safetensors").write_bytes(b"")
    (d / "ckpt").mkdir()
    (d / "ckpt" / "config.json").write_text(json.dumps({"dim": 64}))
    (d / "ckpt" / "model.safetensors").write_bytes(b"")
    (d / "hf-noweights").mkdir()
    (d / "hf-noweights" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    # what the resources step imports, imported once here: each case is then timed on its own work
    import andromeda.model  # noqa: F401

    try:
        import transformers  # noqa: F401
        from transformers import CONFIG_MAPPING  # noqa: F401
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: F401
    except ImportError:
        pass
    return d


def test_generator_breadth(files):
    cases = all_cases(files)
    ids = [c[0] for c in cases]
    assert len(cases) >= 250 and len(set(ids)) == len(ids)
    for name in scenario_config.names():  # every scenario, every one of its fields
        for field, info in scenario_config.get_config(name).model_fields.items():
            key = info.alias or field
            assert any(i.startswith(f"{name}/scenarios[0].{key}:") for i in ids), (name, key)
    for field in Manifest.model_fields:  # every top-level field (scenarios: through the ones above)
        assert field == "scenarios" or any(i.startswith(f"top/{field}") for i in ids), field


def test_base_manifests_are_valid(files, tmp_path):
    for m in [base(n) for n in scenario_config.names()] + [full_base()]:
        p = tmp_path / "m.yml"
        p.write_text(yaml.safe_dump(m))
        manifest_mod.load_manifest(p)  # resolve=True: each case breaks exactly what it names


def _fail_if_run(*args, **kwargs):
    raise AssertionError("a fuzzed manifest was accepted and the run started")


def _fail_if_built(*args, **kwargs):
    raise AssertionError("a fuzzed manifest built a model: validation must fail before any model is built")


def test_fuzzed_manifests_fail_with_one_line(files, tmp_path, capsys, monkeypatch):
    """Each broken manifest exits 2 with one line naming what is wrong, before a run starts or a model is built
    (built, not timed: a wall-clock limit fails on a loaded machine, e.g. while transformers is first imported)."""
    import andromeda.runs.runner as runner
    import andromeda.sources.models as models

    monkeypatch.setattr(runner, "run", _fail_if_run)
    monkeypatch.setattr(models, "build", _fail_if_built)
    failures, slowest = [], (0.0, "")
    for i, (cid, content, fragment) in enumerate(all_cases(files)):
        path = tmp_path / f"{i}.yml"
        path.write_bytes(content)
        t0 = time.perf_counter()
        try:
            code = main(["run", str(path), "--out", str(tmp_path / f"out{i}")])
        except SystemExit as e:
            code = e.code
        seconds = time.perf_counter() - t0
        slowest = max(slowest, (seconds, cid))
        out, err = capsys.readouterr()
        err = err.strip()
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if "\n" in err or not err.startswith("error: "):
            problems.append("not one line")
        if "Traceback" in err:
            problems.append("traceback")
        if fragment not in err:
            problems.append(f"does not name {fragment!r}")
        if problems:
            failures.append(f"{cid}: {', '.join(problems)}: {err[:300]!r}")
    assert not failures, f"{len(failures)} of {i + 1} fuzzed manifests:\n" + "\n".join(failures)
    print(f"{i + 1} fuzzed manifests; slowest {slowest[1]} {slowest[0]:.2f} s")
