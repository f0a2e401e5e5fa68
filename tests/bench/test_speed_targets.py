"""benchmarks/speed_targets.py: the verdict table of issue 9's targets, from measured numbers (no GPU needed)."""

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def st():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("speed_targets")
    finally:
        sys.path.remove(str(BENCH))


def _attention(tri_fwd, flex_fwd, cudnn_fwd, tri_fb, cudnn_fb, n=8192):
    e = "effective_tflops"
    return {f"triton_fwd_{n}": {e: tri_fwd}, f"flex_fwd_{n}": {e: flex_fwd},
            f"cudnn_fwd_{n}": {e: cudnn_fwd}, f"triton_fwdbwd_{n}": {e: tri_fb},
            f"flex_fwdbwd_{n}": {e: 1.0}, f"cudnn_fwdbwd_{n}": {e: cudnn_fb}}


def test_attention_verdicts_use_the_ratios_and_thresholds(st):
    # 425 / 500 = 0.85 exactly (met); 425 / 213 = 1.995 (< 2, missed); 300 / 400 = 0.75 (met)
    rows = {r["target"]: r for r in st.verdicts({"attention": _attention(425.0, 213.0, 500.0, 300.0, 400.0),
                                                 "model": {}})}
    fwd, flex = rows["attention fwd 8K vs cuDNN (effective)"], rows["attention fwd 8K vs FlexAttention (effective)"]
    assert fwd["met"] and fwd["measured"] == "0.85x"
    assert not flex["met"]
    assert flex["measured"] == "2.00x"  # rounds up, still missed
    assert rows["attention fwd+bwd 8K vs cuDNN (effective)"]["met"]
    slower = {r["target"]: r for r in st.verdicts({"attention": _attention(420.0, 100.0, 500.0, 299.0, 400.0),
                                                   "model": {}})}
    assert not slower["attention fwd 8K vs cuDNN (effective)"]["met"]
    assert slower["attention fwd 8K vs FlexAttention (effective)"]["met"]
    assert not slower["attention fwd+bwd 8K vs cuDNN (effective)"]["met"]


def test_model_verdicts(st):
    m = {"andromeda_prefill_8192_ms": 120.0, "andromeda_prefill_8192_mfu": 0.549,
         "andromeda_prefill_8192_mfu_measured_peak": 0.72,
         "andromeda_compiled_prefill_8192_ms": 100.0, "andromeda_compiled_prefill_8192_mfu": 0.66,
         "hf_prefill_8192_ms": 110.0,
         "andromeda_prefill_32768_ms": 800.0, "andromeda_prefill_32768_mfu": 0.65,
         "hf_prefill_32768_ms": 800.0,
         "andromeda_tpot_ms": 2.0, "andromeda_decode_floor_ms": 1.6, "andromeda_decode_floor_datasheet_ms": 1.4,
         "hf_tpot_ms": 5.9}
    rows = {r["target"]: r for r in st.verdicts({"attention": {}, "model": m})}
    eager8 = rows["prefill 8K MFU, datasheet peak (eager)"]
    assert not eager8["met"] and eager8["measured"] == "54.9%"
    assert eager8["also"] == "72.0% of measured matmul rate"  # the second reading, beside the verdict's
    assert rows["prefill 8K MFU, datasheet peak (compiled)"]["met"]
    assert rows["prefill 8K MFU, datasheet peak (compiled)"]["also"] == "n/a of measured matmul rate"
    assert not rows["prefill 8K time vs HF Llama (eager)"]["met"]  # 120 / 110 = 1.09x
    assert rows["prefill 8K time vs HF Llama (compiled)"]["measured"] == "0.91x"
    assert rows["prefill 32K MFU, datasheet peak (eager)"]["met"]
    assert rows["prefill 32K time vs HF Llama (eager)"]["met"]  # ties
    assert not any(k.startswith("prefill 32K MFU") and "compiled" in k for k in rows)  # not measured: no row
    decode = rows["decode 4K: share of bandwidth floor (measured copy)"]
    assert decode["met"] and decode["measured"] == "80.0%"  # 1.6 / 2.0
    assert decode["also"] == "70.0% of datasheet floor"  # 1.4 / 2.0
    assert not rows["decode 4K: speed-up vs HF generate"]["met"]  # 5.9 / 2.0 = 2.95x


def test_unknown_device_judges_mfu_on_the_measured_rate(st):
    m = {"andromeda_prefill_8192_ms": 120.0, "andromeda_prefill_8192_mfu_measured_peak": 0.56,
         "andromeda_tpot_ms": 2.0, "andromeda_decode_floor_ms": 1.5}
    rows = {r["target"]: r for r in st.verdicts({"attention": {}, "model": m})}
    r = rows["prefill 8K MFU, measured matmul rate (eager)"]
    assert r["met"] and r["measured"] == "56.0%" and r["also"] == "datasheet peak unknown"
    assert rows["decode 4K: share of bandwidth floor (measured copy)"]["also"] == "n/a of datasheet floor"


def test_prefill_and_decode_fields_by_hand(st):
    """The record fields speed_targets writes: both MFU readings, both floors, both shares."""
    from andromeda.bench.facts import facts_from_config
    from andromeda.model import from_name

    f = facts_from_config(from_name("tiny"))  # dim 64, 2 layers, 4 heads of 16, 1 KV head, FFN 256, vocab 320
    n = 32
    weights = 2 * (2 * n * 64 * (2 * 4 * 16 + 2 * 1 * 16) + 2 * (2 * n * 64 * 256))
    attn = 2 * 2 * (2 * 4 * (n * (n + 1) // 2) * 16)  # causal pairs
    head = 2 * 64 * 320  # the last position only
    flops = weights + attn + head
    fl = {"matmul_bf16_tflops": 500.0, "datasheet_bf16_tflops": 1000.0, "copy_gb_per_s": 2000.0,
          "datasheet_gb_per_s": 4000.0}
    got = st.prefill_fields("andromeda", n, f, 2.0, fl)
    assert got["andromeda_prefill_32_ms"] == 2.0
    assert got["andromeda_prefill_32_mfu"] == pytest.approx(flops / 2e-3 / 1e12 / 1000.0, rel=1e-12)
    assert got["andromeda_prefill_32_mfu_measured_peak"] == pytest.approx(flops / 2e-3 / 1e12 / 500.0, rel=1e-12)
    assert "hf_prefill_32_mfu" not in st.prefill_fields("hf", n, f, 2.0, {**fl, "datasheet_bf16_tflops": None})

    step_bytes = 6e9  # 3 ms at 2,000 GB/s, 1.5 ms at 4,000 GB/s
    readings = st.ms.floor_readings(step_bytes, fl)
    got = st.decode_fields("andromeda", readings, {"tpot": 4.0, "torch_step_tpot": 5.0})
    assert got["andromeda_decode_step_bytes"] == step_bytes
    assert got["andromeda_decode_floor_ms"] == pytest.approx(3.0)
    assert got["andromeda_decode_floor_datasheet_ms"] == pytest.approx(1.5)
    assert got["andromeda_tpot_ms"] == 4.0 and got["andromeda_torch_step_tpot_ms"] == 5.0
    assert got["andromeda_tpot_of_floor"] == pytest.approx(0.75)
    assert got["andromeda_tpot_of_datasheet_floor"] == pytest.approx(0.375)
    assert got["andromeda_torch_step_tpot_of_floor"] == pytest.approx(0.6)
