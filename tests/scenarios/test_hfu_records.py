"""HFU reaches the records: the training and data_parallel scenarios carry hardware_tflops and hfu when
activation checkpointing recomputes the blocks' forward, compare knows hfu is better higher, and the
CPU records never call the process RSS peak memory.

Expected FLOPs are worked out by hand from the tiny preset's shape (non-causal, eager attention, so every
(query, key) pair counts and attention's backward is 2x forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from andromeda.measure.timing import TimingConfig
from andromeda.runs.context import Case, RunContext
from andromeda.sources.models import build
from andromeda.verdicts.comparison import metric_kind

SOURCE = ("andromeda:tiny?causal=false&alibi_pos_bias=false&alibi_num_heads=null&rotary_xpos=false"
          "&attn_backend=eager")
PEAK = 0.5  # TFLOP/s: a made-up device peak, so MFU and HFU exist on the CPU
B, N = 2, 16


def _hand(tokens_b: int, seq: int) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one training step of the tiny preset on tokens_b x seq tokens."""
    t = tokens_b * seq
    d, h, hkv, hd, f, v, L = 64, 4, 1, 16, 256, 320, 2
    proj = L * 2 * t * d * (2 * h * hd + 2 * hkv * hd)  # q, out: d x 64; k, v: d x 16
    ff_in = ff_out = L * 2 * t * d * f  # ungated FFN: d -> f, f -> d
    attn = L * 2 * (2 * tokens_b * h * seq * seq * hd)  # scores + PV, every pair (non-causal)
    head = 2 * t * d * v
    model = 3 * (proj + ff_in + ff_out + head) + (1 + 2.0) * attn  # eager saves P: attention backward 2x
    # checkpointing runs the blocks' forward again in backward; torch's early stop skips the FFN output
    # projection (the block ends in x + W_out(h)); the LM head is outside the blocks
    return model, model + proj + ff_in + attn


def _ctx(scenario: str, params: dict, **extra) -> RunContext:
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, env={},
                     timing=TimingConfig(warmup=0, min_runs=1, max_runs=1, budget_s=10.0, target_rel_ci=None),
                     case=Case(case_id="c", source=SOURCE, scenario=scenario, params=params), extra=extra)
    ctx.peak_for_precision = lambda precision: PEAK  # the CPU has no datasheet peak
    return ctx


@pytest.mark.parametrize("name", ["hfu", "mfu", "mfu_measured_peak", "hardware_tflops", "hardware_tflops_per_rank",
                                  "prefill_8192_mfu_measured_peak"])
def test_utilization_and_rates_are_better_higher(name):
    assert metric_kind(name) == ("throughput", "higher")


def test_step_records_carry_hardware_tflops_and_hfu():
    from andromeda.scenarios.training import step_records

    hist = [{"step": i, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0, "step_ms": 10.0,
             "tflops": 0.1 * i, "mfu": 0.2 * i, "hardware_tflops": 0.13 * i, "hfu": 0.26 * i} for i in range(1, 5)]
    (s2, m2), (s4, m4) = step_records(hist, [], log_every=2)
    assert (s2, s4) == (2, 4)
    assert m2["hfu"] == pytest.approx(0.26 * 1.5) and m4["hfu"] == pytest.approx(0.26 * 3.5)  # medians of 2 steps
    assert m2["hardware_tflops"] == pytest.approx(0.13 * 1.5) and m4["mfu"] == pytest.approx(0.2 * 3.5)
    plain = [{k: v for k, v in h.items() if k not in ("hfu", "hardware_tflops")} for h in hist]
    assert all("hfu" not in m for _, m in step_records(plain, [], log_every=2))  # no recompute: no HFU


@pytest.mark.parametrize("checkpointing", [True, False])
def test_training_scenario_records_hfu_with_activation_checkpointing(checkpointing):
    from andromeda.scenarios.config.training import TrainingConfig
    from andromeda.scenarios.training import Training

    config = TrainingConfig.model_validate({
        "scenario": "training", "data": "synthetic:markov?n_symbols=16&successors=3&val_docs=2&doc_len=64",
        "steps": 4, "batch": B, "seq_len": N, "warmup_steps": 1, "log_every": 2, "eval_every": 0,
        "eval_max_tokens": 64, "activation_checkpointing": checkpointing})
    (p,) = config.points()
    bundle = build(SOURCE, torch.device("cpu"), torch.float32)
    records = Training().run(bundle, p, _ctx("training", p))
    model, hardware = _hand(B, N)
    final = records[-1]
    assert final.params.get("final")
    m = final.metrics
    assert m["mfu"] == pytest.approx(m["tflops"] / PEAK, rel=1e-9)
    if checkpointing:
        for rec in records:  # every logged interval and the summary
            assert rec.metrics["hfu"] / rec.metrics["mfu"] == pytest.approx(hardware / model, rel=1e-9)
            assert rec.metrics["hardware_tflops"] / rec.metrics["tflops"] == pytest.approx(hardware / model, rel=1e-9)
        assert m["hfu"] == pytest.approx(m["hardware_tflops"] / PEAK, rel=1e-9)
        assert "hfu_ci_low" in m
    else:
        assert not any("hfu" in r.metrics or "hardware_tflops" in r.metrics for r in records)
    # on the CPU no field named peak memory is the process RSS
    assert "peak_mib" not in m and m["rss_peak_mib"] > 0
    assert "rss_peak_mib" in final.info["peak_mib"]


def test_data_parallel_records_hfu_when_it_checkpoints(tmp_path):
    import torch.distributed as dist

    from andromeda.scenarios.config.data_parallel import DataParallelConfig
    from andromeda.scenarios.data_parallel import DataParallel
    from andromeda.scenarios.multiprocess import DistInfo

    config = DataParallelConfig.model_validate({
        "scenario": "data_parallel", "ranks": [1], "batch": B, "seq_len": N, "warmup": 1, "steps": 3,
        "profile_steps": 0, "activation_checkpointing": True})
    (p,) = config.points()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        bundle = build(SOURCE, torch.device("cpu"), torch.float32)
        ctx = _ctx("data_parallel", p, dist=DistInfo(rank=0, world_size=1, local_rank=0, backend="gloo", host="h"))
        (rec,) = DataParallel().run(bundle, p, ctx)
        (merged,) = DataParallel().merge([rec], [[rec]], ctx)
    finally:
        dist.destroy_process_group()
    model, hardware = _hand(B, N)
    assert merged.info["flops_per_step"] == model and merged.info["hardware_flops_per_step"] == hardware
    m = merged.metrics
    step_s = float(np.median(merged.samples["step_ms"])) / 1e3
    assert m["hardware_tflops"] == pytest.approx(hardware / step_s / 1e12, rel=1e-9)
    assert m["hfu"] == pytest.approx(hardware / step_s / 1e12 / PEAK, rel=1e-9)
    assert m["mfu"] == pytest.approx(model / step_s / 1e12 / PEAK, rel=1e-9)
    assert "peak_mib" not in m and m["rss_peak_mib"] > 0  # off CUDA the peak is the RSS, named as such


@pytest.mark.parametrize("cap", [64, None])
def test_training_records_what_validation_scored(cap):
    """eval_max_tokens cuts each validation: the record says how much of the split (2 documents of 64 tokens)
    was scored and, when cut, warns; with no cap everything is scored and nothing warns."""
    from andromeda.scenarios.config.training import TrainingConfig
    from andromeda.scenarios.training import Training

    config = TrainingConfig.model_validate({
        "scenario": "training", "data": "synthetic:markov?n_symbols=16&successors=3&val_docs=2&doc_len=64",
        "steps": 2, "batch": B, "seq_len": N, "warmup_steps": 1, "log_every": 2, "eval_every": 0,
        "eval_max_tokens": cap})
    (p,) = config.points()
    bundle = build(SOURCE, torch.device("cpu"), torch.float32)
    final = Training().run(bundle, p, _ctx("training", p))[-1]
    got = final.info["validation_scored"]
    assert got["documents_total"] == 2 and 2 * 63 <= got["tokens_total"] <= 2 * 64
    if cap is None:
        assert got["tokens_scored"] == got["tokens_total"] and got["documents_whole"] == 2
        assert "warnings" not in final.info
    else:
        assert got["tokens_scored"] == cap < got["tokens_total"]
        warned = final.info["warnings"]
        assert any(w.startswith("validation: max_tokens 64 stopped the evaluation early") for w in warned)
