"""The training scenario's speed and health fields (precision incl. bf16-master, fused_adamw, compile, fused_ce,
checkpointing, health_every, spike_window, spike_sigma) on the tiny preset on the CPU: where the math is the plain
step's the losses are too, bf16-master gives the model back as it was, the records carry the health readings and
MFU/HFU against both peaks, manifest errors name the field, and the train-quick / train-gpu presets use the fields.

One model serves every case here, as in a run: a case that left it changed would show in the next one's losses."""

from __future__ import annotations

import math

import pytest
import torch

from andromeda.errors import ConfigError
from andromeda.measure.timing import TimingConfig
from andromeda.runs.context import Case, RunContext
from andromeda.scenarios import training as scenario
from andromeda.scenarios.config.training import TrainingConfig
from andromeda.sources.models import build

DATA = "synthetic:markov?n_symbols=16&successors=3&val_docs=2&doc_len=64"
BASE = {"scenario": "training", "data": DATA, "steps": 4, "batch": 2, "seq_len": 16, "warmup_steps": 1,
        "log_every": 2, "eval_every": 0, "eval_max_tokens": 64, "health_every": 2, "spike_window": 5}
PEAK, MATMUL = 0.5, 0.25  # TFLOP/s: a made-up datasheet peak and measured matmul rate, so MFU exists on the CPU
FAST_COMPILED = {"compile": "blocks", "compile_backend": "aot_eager", "fused_ce": True, "checkpointing": "selective"}


def _ctx(p: dict) -> RunContext:
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, env={},
                     timing=TimingConfig(warmup=0, min_runs=1, max_runs=1, budget_s=10.0, target_rel_ci=None),
                     case=Case(case_id="c", source="andromeda:tiny", scenario="training", params=p))
    ctx.peak_for_precision = lambda precision: PEAK
    ctx.extra["matmul_tflops"] = {"float32": MATMUL, "bfloat16": MATMUL}  # what a CUDA run measures once
    return ctx


def _run(bundle, **fields):
    (p,) = TrainingConfig.model_validate({**BASE, **fields}).points()
    return scenario.Training().run(bundle, p, _ctx(p))


def _losses(records) -> list[float]:
    return records[-1].samples["loss"]


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return build("andromeda:tiny", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def plain(bundle):
    return _run(bundle)


@pytest.mark.parametrize("fields", [{"fused_ce": True}, {"checkpointing": "full"}, {"checkpointing": "selective"},
                                    {"fused_adamw": True}, FAST_COMPILED],
                         ids=["fused_ce", "full", "selective", "fused_adamw", "compiled"])
def test_same_math_same_losses(bundle, plain, fields):
    got = _run(bundle, **fields)
    assert all(r.status == "ok" for r in got), [r.message for r in got]
    assert all(math.isfinite(x) for x in _losses(got))
    assert _losses(got) == pytest.approx(_losses(plain), rel=1e-5)
    final = got[-1]
    for k, v in fields.items():
        assert final.params[k] == v
    if "compile" in fields:
        assert final.info["compile"] == "blocks" and final.info["blocks"]["fullgraph"] is True


def test_compile_raises_the_recompile_limit_inside_the_case_only(bundle, monkeypatch):
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before, seen = getattr(dynamo_config, name), []
    real = scenario.Trainer.run

    def run(self, *a, **kw):
        seen.append(getattr(dynamo_config, name))
        return real(self, *a, **kw)

    monkeypatch.setattr(scenario.Trainer, "run", run)
    _run(bundle, steps=1, **FAST_COMPILED)
    _run(bundle, steps=1)
    assert seen == [max(before, scenario.RECOMPILE_LIMIT), before]
    assert getattr(dynamo_config, name) == before


def test_bf16_master_gives_the_model_back_as_it_was(bundle, plain):
    state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    got = _run(bundle, precision="bf16-master", fused_adamw=True, fused_ce=True)
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    after = bundle.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert _losses(got) == pytest.approx(_losses(plain), rel=2e-2)  # bf16 rounding of the same run
    assert got[-1].info["precision"] == "bf16-master"
    assert _losses(_run(bundle)) == _losses(plain)  # the next case trains the model as built, exactly


def test_bf16_master_on_a_bfloat16_model_leaves_it_bfloat16():
    b = build("andromeda:tiny", torch.device("cpu"), torch.bfloat16)
    head = b.model.head.weight.detach().clone()
    recs = _run(b, steps=2, precision="bf16-master")
    assert recs[-1].status == "ok" and all(p.dtype == torch.bfloat16 for p in b.model.parameters())
    assert torch.equal(b.model.head.weight, head)


def test_records_carry_health_and_both_peaks(bundle, plain):
    *steps, final = plain
    assert [r.params["step"] for r in steps] == [2, 4]
    for r in steps:  # health_every 2 = log_every: each interval's health step is its last
        assert r.info["health_step"] == r.params["step"] and r.metrics["spikes"] == 0
        assert {"blocks.0", "blocks.1"} <= set(r.info["layer_grad_norm"])
        assert set(r.info["activations"]) == {"blocks.0", "blocks.1"}
        assert r.metrics["mfu_measured_peak"] == pytest.approx(r.metrics["tflops"] / MATMUL, rel=1e-9)
    m = final.metrics
    assert m["mfu"] == pytest.approx(m["tflops"] / PEAK, rel=1e-9)
    assert m["mfu_measured_peak"] == pytest.approx(m["tflops"] / MATMUL, rel=1e-9)
    assert m["spikes"] == 0 and final.info["spikes"] == []
    assert final.info["peak_tflops"] == PEAK and final.info["matmul_tflops_measured"] == MATMUL
    assert final.info["flops_per_step"] > 0 and final.info["attn_impl"]
    for k in ("precision", "fused_adamw", "compile", "compile_backend", "fused_ce", "checkpointing", "health_every",
              "spike_window", "spike_sigma"):
        assert k in final.params


def test_hfu_against_both_peaks_under_checkpointing(bundle):
    m = _run(bundle, checkpointing="full", health_every=0)[-1].metrics
    assert m["hfu"] == pytest.approx(m["hardware_tflops"] / PEAK, rel=1e-9)
    assert m["hfu_measured_peak"] == pytest.approx(m["hardware_tflops"] / MATMUL, rel=1e-9)
    assert m["hardware_tflops"] > m["tflops"] and "spikes" not in m  # health off: no spike count
    from andromeda.report.format import metric_header
    from andromeda.verdicts.comparison import metric_kind

    assert metric_kind("hfu_measured_peak") == ("throughput", "higher")  # compare: better higher
    assert metric_header("hfu_measured_peak") == "HFU (measured matmul peak)"


def test_a_spike_in_an_interval_names_its_layer():
    spike = {"step": 3, "metric": "grad_norm", "value": 9.0, "expected": 1.0, "std": 0.1, "sigmas": 80.0,
             "layer": "blocks.1", "layer_ratio": 9.0}
    hist = [{"step": 3, "layer_grad_norm": {"blocks.1": 9.0}, "spikes": [spike]},
            {"step": 4, "layer_grad_norm": {"blocks.1": 1.0}, "activations": {"blocks.1": {"mean": 0.0}}}]
    info = scenario.span_health(hist)
    assert info["spikes"] == [spike] and info["spikes"][0]["layer"] == "blocks.1"
    assert info["health_step"] == 4 and info["layer_grad_norm"] == {"blocks.1": 1.0}
    assert scenario.span_health([{"step": 1, "layer_grad_norm": {"blocks.0": 1.0}}]) == {}  # no health step


@pytest.mark.parametrize("fields,where", [
    ({"fused_adamw": True, "optimizer": "adamw8bit"}, "fused_adamw: is torch's AdamW kernel"),
    ({"activation_checkpointing": True, "checkpointing": "selective"}, "checkpointing: is selective"),
    ({"compile_backend": "aot_eager"}, "compile_backend: aot_eager has no effect with compile: none"),
    ({"checkpointing": "some"}, "checkpointing"),
    ({"precision": "bf16-masters"}, "precision"),
    ({"compile": "all"}, "compile"),
    ({"fused_ce": "yes"}, "fused_ce"),
    ({"health_every": -1}, "health_every"),
    ({"spike_window": 0}, "spike_window"),
    ({"spike_sigma": 0}, "spike_sigma"),
])
def test_manifest_errors_name_the_field(fields, where):
    from andromeda.runs.manifest import validate

    with pytest.raises(ConfigError, match=r"scenarios\[0\]\." + where):
        validate({"models": ["andromeda:tiny"], "scenarios": [{**BASE, **fields}]})


def test_train_quick_runs_the_fast_settings_and_records_them(tmp_path):
    from andromeda.records import RecordStore
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.plan import plan
    from andromeda.runs.runner import run

    m = load_manifest(preset="train-quick")
    assert len({c.case_id for c in plan(m)}) == len(plan(m)) == 2
    fast = m.scenarios[1]
    assert (fast.precision, fast.compile, fast.fused_ce, fast.fused_adamw, fast.checkpointing) == (
        "bf16-master", "blocks", True, True, "selective")
    short = fast.model_copy(update={"steps": 2, "batch": 2, "seq_len": 16, "log_every": 1, "health_every": 1,
                                    "eval_max_tokens": 64})  # the shapes of the tests above: compiled once
    run(m.model_copy(update={"scenarios": [short], "device": "cpu"}), tmp_path)
    recs = RecordStore(tmp_path / "results.jsonl").read()
    assert [r.status for r in recs] == ["ok"] * 3, [r.message for r in recs]
    assert all("layer_grad_norm" in r.info and "spikes" in r.metrics for r in recs[:2])
    final = recs[-1]
    assert final.params["precision"] == "bf16-master" and final.info["blocks"]["compile"] == "blocks"
    assert all(math.isfinite(x) for x in final.samples["loss"])


def test_train_gpu_covers_the_presets_beside_matched_llamas_with_the_fast_settings():
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.plan import plan

    m = load_manifest(preset="train-gpu")
    presets = ("base", "1b", "andromeda")
    assert set(m.models) == {f"{kind}{p}" for kind in ("andromeda:", "hf:matched:") for p in presets}
    cases = plan(m)
    fast = [c.params for c in cases if c.params["precision"] == "bf16-master"]
    assert {(c.source, c.params["seq_len"]) for c in cases if c.params["precision"] == "bf16-master"} == {
        (s, n) for s in m.models for n in (2048, 8192)}
    assert all(p["fused_adamw"] and p["compile"] == "blocks" and p["fused_ce"] and p["compile_backend"] == "inductor"
               for p in fast)
    assert all(c.params["batch"] * c.params["grad_accum"] * c.params["seq_len"] == 32768 for c in cases)
    assert all(c.params["steps"] <= 8 for c in cases)  # a throughput run: minutes, not hours
