"""The training loop: exact resume, schedule, accumulation, activation checkpointing, precision,
optimizers, per-step records; and the train-quick preset reaching the entropy floor."""

import math

import pytest
import torch

from andromeda.data import open_data
from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model import Andromeda, from_name
from andromeda.train import (
    STATE_FILE,
    TrainConfig,
    Trainer,
    WarmupCosine,
    adamw8bit_unavailable,
    load_state,
)

DATA = open_data("synthetic:markov?n_symbols=32&successors=4")


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return Andromeda(from_name("tiny", **kw))


def _batches(batch=4, seq=32):
    return lambda pos: torch.from_numpy(DATA.train_batch(batch, seq, pos))


def _cfg(tmp_path=None, **kw):
    base = dict(steps=8, batch=4, seq_len=32, warmup_steps=2, log_every=1,
                checkpoint_dir=str(tmp_path) if tmp_path else None)
    return TrainConfig(**{**base, **kw})


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    cfg = dict(grad_accum=2, checkpoint_every=3)
    whole = Trainer(_model(dropout=0.1), _cfg(tmp_path / "a", **cfg), _batches()).run()
    first = Trainer(_model(dropout=0.1), _cfg(tmp_path / "b", **cfg), _batches())
    first.run(until=5)  # "crashes" after step 5: the checkpoint is at step 3, steps 4 and 5 are lost
    m = _model(seed=99, dropout=0.1)  # other weights: the checkpoint must bring everything back
    again = Trainer(m, _cfg(tmp_path / "b", **cfg), _batches())
    assert again.resume() and again.step == 3 and again.position == 6
    resumed = again.run()
    assert resumed.resumed_from == 3
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]  # exact, float32 CPU
    assert [h["grad_norm"] for h in resumed.history] == [h["grad_norm"] for h in whole.history]
    a = load_state(tmp_path / "a" / STATE_FILE)["model"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, a[k]), k


def test_checkpoint_is_weights_only(tmp_path):
    Trainer(_model(), _cfg(tmp_path, steps=2), _batches()).run()
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and state["data_position"] == 2
    assert {"model", "optimizer", "scheduler", "rng", "history", "config"} <= set(state)


def test_resume_refuses_other_settings(tmp_path):
    Trainer(_model(), _cfg(tmp_path, steps=2), _batches()).run()
    t = Trainer(_model(), _cfg(tmp_path, steps=4, lr=1e-3), _batches())
    with pytest.raises(ConfigError, match="lr"):
        t.resume()


def test_warmup_cosine_closed_form():
    f = WarmupCosine(steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1)
    t = (54.5 - 10) / 89
    assert f(54.5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    tr = Trainer(_model(), _cfg(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1), _batches())
    lrs = []
    for _ in range(3):
        lrs.append(tr.train_step()["lr"])
    assert lrs == pytest.approx([1e-4, 2e-4, 3e-4])


def test_gradient_accumulation_equals_the_large_batch():
    """Two micro-batches of 4 average to the gradient of the batch of 8 (equal token counts, no padding).
    Compared are the gradients the optimizer is given, not the weights after it: AdamW's first step is
    nearly sign(g) * lr, so a gradient within float rounding of zero can flip a weight by 2 lr."""
    big = torch.from_numpy(DATA.train_batch(8, 32, 0))
    common = dict(steps=1, warmup_steps=0, grad_clip=None)
    one = Trainer(_model(), _cfg(batch=8, **common), lambda pos: big)
    two = Trainer(_model(), _cfg(batch=4, grad_accum=2, **common), lambda pos: big[4 * pos: 4 * pos + 4])
    a, b = one.train_step(), two.train_step()
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    grads = [(p.grad, q.grad) for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True)]
    scale = max(g.abs().max().item() for g, _ in grads)
    for g, h in grads:
        torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-5 * scale)


def test_activation_checkpointing_gives_the_same_step():
    a = Trainer(_model(), _cfg(steps=2), _batches()).run()
    m = _model()
    b = Trainer(m, _cfg(steps=2, activation_checkpointing=True), _batches()).run()
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-6)
    assert "forward" not in m.blocks[0].__dict__  # undone after the run


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train(precision):
    t = Trainer(_model(), _cfg(steps=3, precision=precision), _batches())
    res = t.run()
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert (t.scaler is not None) == (precision == "fp16")
    if precision == "fp16":
        assert "loss_scale" in res.history[-1]


def test_adamw8bit_needs_cuda_and_bitsandbytes():
    reason = adamw8bit_unavailable(torch.device("cpu"))
    assert reason and "CUDA" in reason
    with pytest.raises(UnsupportedError, match="CUDA"):
        Trainer(_model(), _cfg(optimizer="adamw8bit"), _batches())


def test_step_records_and_validation_schedule():
    evals = []

    def evaluate():
        evals.append(1)
        return {"val_loss": 1.0, "val_ppl": math.e}

    from andromeda.measure.facts import facts_from_config

    m = _model()
    res = Trainer(m, _cfg(steps=5, eval_every=2), _batches(), evaluate=evaluate, facts=facts_from_config(m.cfg)).run()
    assert [e["step"] for e in res.evals] == [2, 4, 5]
    h = res.history[-1]
    for k in ("loss", "lr", "grad_norm", "step_ms", "forward_ms", "backward_ms", "optimizer_ms", "tokens_per_s",
              "peak_rss_mib", "tflops"):
        assert k in h and math.isfinite(h[k]), k
    assert h["tokens_per_s"] == pytest.approx(4 * 32 / (h["step_ms"] / 1e3))
    assert h["forward_ms"] + h["backward_ms"] + h["optimizer_ms"] <= h["step_ms"] * 1.001
    assert "mfu" not in h  # no known peak on a CPU


def test_training_scenario_resumes_from_its_checkpoint(tmp_path):
    """A finished case run again (same checkpoint_dir) resumes at its last step: same records."""
    import yaml

    from andromeda.records import RecordStore
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.runner import run

    m = {"name": "t", "models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
         "scenarios": [{"scenario": "training", "data": "synthetic:markov?n_symbols=16&successors=3&val_docs=2"
                        "&doc_len=64", "steps": 6, "batch": 2, "seq_len": 16, "warmup_steps": 2, "log_every": 2,
                        "eval_every": 3, "eval_max_tokens": 64, "checkpoint_dir": str(tmp_path / "ck")}]}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(m))
    manifest = load_manifest(tmp_path / "m.yml")
    run(manifest, tmp_path / "a")
    run(manifest, tmp_path / "b")
    a, b = (RecordStore(tmp_path / x / "results.jsonl").read() for x in "ab")
    assert all(r.status == "ok" for r in a + b), [r.message for r in a + b]
    assert [r.params["step"] for r in a] == [2, 3, 4, 6, 6]
    assert [r.metrics.get("loss") for r in a] == [r.metrics.get("loss") for r in b]
    assert a[-1].info["resumed_from"] is None and b[-1].info["resumed_from"] == 6
    assert (tmp_path / "ck" / a[-1].case_id / "model" / "config.json").exists()


@pytest.mark.slow
def test_train_quick_reaches_the_entropy_floor(tmp_path):
    from andromeda.cli import main
    from andromeda.records import RecordStore

    out = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--out", str(out)]) == 0
    final = [r for r in RecordStore(out / "results.jsonl") if r.params.get("final")][0]
    m = final.metrics
    assert m["val_ppl"] <= 1.10 * m["floor_ppl"], m
    assert m["val_ppl_over_floor"] == pytest.approx(m["val_ppl"] / m["floor_ppl"])
    report = (out / "report.md").read_text()
    assert "floor ppl" in report and "val ppl" in report
    assert (out / "charts" / "training_val_ppl.png").exists()
