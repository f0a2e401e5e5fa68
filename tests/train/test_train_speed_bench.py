"""benchmarks/train_speed.py --smoke on the CPU: the tiny preset through the fast step, the matched Llama, the
health row, the fp32 baseline and the 8-bit row (skipped here); the JSON's fields and their arithmetic."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
ROWS = ["fp32-eager", "+bf16-master+fused-adamw", "+health", "adamw8bit", "llama-fast"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(BENCH))
    try:
        ts = importlib.import_module("train_speed")
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path_factory.mktemp("bench") / "train_speed.json"
    assert ts.main(["--smoke", "--json", str(out), "--variants", *ROWS]) == 0
    return json.loads(out.read_text())


def test_environment_leads_the_json(result):
    assert {"git_commit", "git_dirty", "device", "versions", "floors", "env", "args", "elapsed_s"} <= set(result)
    assert result["device"] == "cpu" and result["versions"]["torch"]
    assert "triton" in result["versions"]
    fl = result["floors"]
    assert fl["datasheet_bf16_tflops"] is None and fl["matmul_bf16_tflops"] > 0  # a CPU: no datasheet, a measurement


def test_every_row_is_measured_or_says_why_not(result):
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ROWS  # the ladder's order
    assert rows["adamw8bit"]["status"] == "skipped" and "CUDA" in rows["adamw8bit"]["message"]
    matmul = result["floors"]["matmul_bf16_tflops"]
    for name in ("fp32-eager", "+bf16-master+fused-adamw", "+health", "llama-fast"):
        r = rows[name]
        assert r["status"] == "ok", r
        ms = r["step_ms_samples"]
        assert len(ms) == 2 and r["step_ms_median"] == pytest.approx(sorted(ms)[0] / 2 + sorted(ms)[1] / 2)
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (r["step_ms_median"] / 1e3))
        assert r["tflops"] == pytest.approx(r["flops_per_step"] / (r["step_ms_median"] / 1e3) / 1e12)
        assert r["mfu_measured"] == pytest.approx(r["tflops"] / matmul)
        assert r["mfu_datasheet"] is None and r["hfu_datasheet"] is None  # no datasheet peak for a CPU
        assert r["hfu_measured"] >= r["mfu_measured"]
        assert r["micro_batch"] * r["grad_accum"] * r["seq"] == r["tokens_per_step"]
        for k in ("forward_ms", "backward_ms", "optimizer_ms", "data_ms", "warmup_s", "loss_first", "loss_last"):
            assert math.isfinite(r[k]), (name, k)
        assert r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"] <= r["step_ms_median"] * 1.5
        assert r["peak_mib"] is None and r["peak_rss_mib"] > 0  # the CUDA allocator's peak only on CUDA
    fast = rows["+bf16-master+fused-adamw"]
    assert fast["info"]["compile"] == "blocks" and fast["info"]["fullgraph"] is True  # sdpa on CPU: one graph
    assert rows["fp32-eager"]["tokens_per_step"] == rows["fp32-eager"]["seq"]  # one sequence a step
    assert rows["llama-fast"]["info"]["matched"]["within_2pct"] is True
    assert len(fast["losses"]) == 3  # one warm-up and two timed steps
    want = abs(sum(rows["+health"]["losses"]) - sum(fast["losses"])) / sum(fast["losses"])
    assert rows["+health"]["loss_rel_diff_vs_fast"] == pytest.approx(want) and want < 1e-3  # same tokens, same math
    assert "loss_rel_diff_vs_fast" not in rows["llama-fast"] and "loss_rel_diff_vs_fast" not in rows["fp32-eager"]
    assert rows["llama-fast"]["info"]["blocks"].startswith("model.layers")
    assert set(result["health_overhead_pct"]) == {"32"}
    pct = 100 * (rows["+health"]["step_ms_mean"] / fast["step_ms_mean"] - 1)
    assert result["health_overhead_pct"]["32"] == pytest.approx(pct)


def test_the_loss_check_and_the_head_comparison(result):
    lt = result["loss_trajectory"]
    assert lt["status"] == "ok" and len(lt["fp32"]) == len(lt["fast"]) == lt["steps"] == 6
    ref, fast = lt["fp32"], lt["fast"]
    assert lt["rel_diff_mean"] == pytest.approx(abs(sum(fast) - sum(ref)) / sum(ref))
    assert lt["rel_diff_mean"] < 0.01  # bf16 weights and the fused loss track the float32 step
    heads = {h["impl"]: h for h in result["head_loss"]}
    assert {"unfused", "ours", "ours_chunk2048", "ours_compiled", "liger", "cut_cross_entropy"} == set(heads)
    for name in ("unfused", "ours", "ours_chunk2048", "ours_compiled"):
        assert heads[name]["status"] == "ok" and heads[name]["fwd_bwd_ms"] > 0
        assert heads[name]["loss_rel_diff_vs_unfused"] < 1e-5
    assert heads["liger"]["status"] == "skipped" and "CUDA" in heads["liger"]["message"]
