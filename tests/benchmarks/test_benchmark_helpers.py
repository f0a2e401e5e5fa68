"""benchmarks/model_speed.py and attention_kernels.py: their pure helpers on CPU (the scripts run on a GPU)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from bench_scripts import load

from andromeda.measure.facts import facts_from_config
from andromeda.model import Andromeda, from_name
from andromeda.model.backends import tuning_record


@pytest.fixture(scope="module")
def bench():
    return SimpleNamespace(ms=load("model_speed"), ak=load("attention_kernels"))


def test_decode_floor_of_a_bf16_model_by_hand(bench):
    ms = bench.ms
    cfg = from_name("tiny")
    bundle = SimpleNamespace(model=Andromeda(cfg).to(torch.bfloat16), facts=facts_from_config(cfg))
    # the timed steps: 64 after a 4,096-token prompt; step i attends to 4,097 + i keys -> mean 4,128.5
    assert ms.FLOOR_CONTEXT == sum(4097 + i for i in range(64)) / 64 == 4128.5
    # tiny: 87,456 block + final-norm parameters, a 64 x 320 LM head, one 64-wide embedding row, bf16;
    # the KV cache: K and V, 2 layers, 1 KV head of 16, bf16 = 128 bytes a key
    expected = (87_456 + 64 * 320 + 64) * 2 + 4128.5 * 128
    assert ms.decode_bytes(bundle) == expected
    assert ms.decode_floor_ms(bundle, 2000.0) == pytest.approx(expected / 2000e9 * 1e3)
    # what the old floor counted: every parameter, the whole 320 x 64 input table included, 4,096 keys
    everything = sum(p.numel() * 2 for p in bundle.model.parameters()) + 4096 * 128
    assert everything - expected == (320 * 64 - 64) * 2 - 32.5 * 128


def test_floors_line_names_both_readings(bench):
    line = bench.ms.floors_line({"device": "NVIDIA H100 80GB HBM3", "matmul_bf16_tflops": 760.2,
                                 "datasheet_bf16_tflops": 989.5, "copy_gb_per_s": 2950.0,
                                 "datasheet_gb_per_s": 3350.0})
    assert "measured 760 TFLOP/s, datasheet 990 TFLOP/s" in line
    assert "measured 2950 GB/s, datasheet 3350 GB/s" in line
    unknown = bench.ms.floors_line({"device": "X", "matmul_bf16_tflops": 1.0, "datasheet_bf16_tflops": None,
                                    "copy_gb_per_s": 1.0, "datasheet_gb_per_s": None})
    assert unknown.count("datasheet unknown") == 2


def test_attention_dense_causal_flops_by_hand(bench):
    ak = bench.ak
    # 24 heads of 128, N = 4: causal pairs 1 + 2 + 3 + 4 = 10; q @ k^T and p @ v: 2 * 2 * 128 FLOPs a pair
    assert ak.flops(1, 4) == 24 * 10 * 2 * 2 * 128
    assert ak.flops(3, 8192) == 3 * 24 * (8192 * 8193 // 2) * 4 * 128


def test_sdpa_baselines_get_expanded_inputs_outside_the_timed_call(bench, monkeypatch):
    """cuDNN / flash SDPA run plain MHA: K and V are expanded to all heads by `prepare`, once, before timing;
    the timed call passes its inputs to SDPA as they are (no copy inside it)."""
    ak = bench.ak
    table = ak.impls("cpu")
    seen = []

    def spy(q, k, v, **kw):
        seen.append((q, k, v))
        return q

    monkeypatch.setattr(ak.F, "scaled_dot_product_attention", spy)
    q = torch.randn(1, ak.H, 8, ak.D)
    k, v = torch.randn(1, ak.HKV, 8, ak.D), torch.randn(1, ak.HKV, 8, ak.D)
    for name in ("cuDNN SDPA (plain causal MHA)", "flash SDPA (plain causal MHA)"):
        fn = table[name]
        qq, kk, vv = fn.prepare(q, k, v)
        assert kk.shape == vv.shape == (1, ak.H, 8, ak.D) and kk.is_contiguous() and vv.is_contiguous()
        assert torch.equal(kk, k.expand(-1, ak.H, -1, -1)) and qq is q
        fn(qq, kk, vv)
        assert all(a is b for a, b in zip(seen[-1], (qq, kk, vv), strict=True))  # the same tensors: no copy
    for name in ("triton (ALiBi, MQA)", "flex (ALiBi, MQA)"):
        assert getattr(table[name], "prepare", None) is None  # MQA kernels take the 1-head K/V as they are


FL = {"matmul_bf16_tflops": 700.0, "copy_gb_per_s": 3000.0, "device": "NVIDIA H100 80GB HBM3",
      "datasheet_bf16_tflops": 989.5, "datasheet_gb_per_s": 3350.0}


def test_model_speed_main_with_stubbed_timings(bench, monkeypatch, tmp_path):
    """model_speed.py end to end on CPU, GPU timings stubbed: both readings of MFU and of the floor per row."""
    import json

    from andromeda.sources.models import build

    ms = bench.ms
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(ms.floors, "measure", lambda device: dict(FL))
    monkeypatch.setattr(ms, "build", lambda source, device, dtype: build(
        source.replace(f"max_seq_len={ms.LONG}", "max_seq_len=64"), torch.device("cpu"), dtype))
    monkeypatch.setattr(ms, "prefill_ms", lambda bundle, n, compiled=None: 10.0)
    monkeypatch.setattr(ms, "andromeda_tpot_ms", lambda model, mode: 0.5)
    monkeypatch.setattr(ms, "hf_tpot_ms", lambda model: 1.5)
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", ["model_speed.py", "--presets", "tiny", "--json", str(out)])
    ms.main()
    res = json.loads(out.read_text())
    assert {"git_commit", "git_dirty", "device", "versions", "floors", "env", "rows"} <= set(res)
    assert res["env"]["kernel_tuning"] == tuning_record()  # the kernel tuning the run used
    andromeda, hf = res["rows"]
    for mode in ms.DECODE_MODES:
        assert andromeda[f"tpot_{mode}_of_floor"] == pytest.approx(andromeda["decode_floor_ms"] / 0.5)
        sheet = andromeda["decode_floor_datasheet_ms"]
        assert andromeda[f"tpot_{mode}_of_datasheet_floor"] == pytest.approx(sheet / 0.5)
    assert hf["tpot_generate_of_floor"] == pytest.approx(hf["decode_floor_ms"] / 1.5)
    for row in (andromeda, hf):
        assert row["prefill_8192_mfu"] == pytest.approx(row["prefill_8192_mfu_measured_peak"] * 700 / 989.5)
        assert row["decode_floor_ms"] == pytest.approx(row["decode_step_bytes"] / 3000e9 * 1e3)


def test_attention_kernels_main_with_stubbed_timings(bench, monkeypatch, tmp_path):
    import json

    ak = bench.ak
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(ak, "impls", lambda: {n: None for n in ("triton (ALiBi, MQA)", "flex (ALiBi, MQA)",
                                                                "cuDNN SDPA (plain causal MHA)")})
    monkeypatch.setattr(ak, "accuracy", lambda fn: 1e-3)
    monkeypatch.setattr(ak, "measure", lambda fn, b, n, backward, qkv=None: {
        "ms": 2.0, "cv": 0.01, "dense_causal_flops": ak.flops(b, n), "effective_tflops": ak.flops(b, n) / 2e-3 / 1e12,
        "computed_flops": 1e12, "actual_tflops": 500.0, "computed_share": 0.5})
    monkeypatch.setattr(ak, "floors", lambda: {"matmul_bf16_tflops": 700.0, "copy_gb_per_s": 3000.0,
                                               **ak.bench_floors.datasheet("NVIDIA H100 80GB HBM3")})
    out = tmp_path / "attn.json"
    monkeypatch.setattr(sys, "argv", ["attention_kernels.py", "--lengths", "2048", "--json", str(out)])
    ak.main()
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "floors", "env"} <= set(res)
    assert res["env"]["kernel_tuning"] == tuning_record()
    assert res["floors"]["datasheet_gb_per_s"] == 3350.0
    row = next(r for r in res["rows"] if r.get("n") == 2048 and r["pass"] == "fwd")
    assert row["batch"] == 16 and row["dense_causal_flops"] == 16 * 24 * (2048 * 2049 // 2) * 4 * 128
    assert row["inputs"] == "random" and row["actual_tflops"] == 500.0
