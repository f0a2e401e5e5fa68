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
    return {f"triton_fwd_{n}": {"tflops": tri_fwd}, f"flex_fwd_{n}": {"tflops": flex_fwd},
            f"cudnn_fwd_{n}": {"tflops": cudnn_fwd}, f"triton_fwdbwd_{n}": {"tflops": tri_fb},
            f"flex_fwdbwd_{n}": {"tflops": 1.0}, f"cudnn_fwdbwd_{n}": {"tflops": cudnn_fb}}


def test_attention_verdicts_use_the_ratios_and_thresholds(st):
    # 425 / 500 = 0.85 exactly (met); 425 / 213 = 1.995 (< 2, missed); 300 / 400 = 0.75 (met)
    rows = {r["target"]: r for r in st.verdicts({"attention": _attention(425.0, 213.0, 500.0, 300.0, 400.0),
                                                 "model": {}})}
    assert rows["attention fwd 8K vs cuDNN"]["met"] and rows["attention fwd 8K vs cuDNN"]["measured"] == "0.85x"
    assert not rows["attention fwd 8K vs FlexAttention"]["met"]
    assert rows["attention fwd 8K vs FlexAttention"]["measured"] == "2.00x"  # rounds up, still missed
    assert rows["attention fwd+bwd 8K vs cuDNN"]["met"]
    slower = {r["target"]: r for r in st.verdicts({"attention": _attention(420.0, 100.0, 500.0, 299.0, 400.0),
                                                   "model": {}})}
    assert not slower["attention fwd 8K vs cuDNN"]["met"] and slower["attention fwd 8K vs FlexAttention"]["met"]
    assert not slower["attention fwd+bwd 8K vs cuDNN"]["met"]


def test_model_verdicts(st):
    m = {"andromeda_prefill_8192_ms": 120.0, "andromeda_prefill_8192_mfu": 0.549,
         "andromeda_compiled_prefill_8192_ms": 100.0, "andromeda_compiled_prefill_8192_mfu": 0.66,
         "hf_prefill_8192_ms": 110.0,
         "andromeda_prefill_32768_ms": 800.0, "andromeda_prefill_32768_mfu": 0.65,
         "hf_prefill_32768_ms": 800.0,
         "andromeda_tpot_ms": 2.0, "andromeda_decode_floor_ms": 1.6, "hf_tpot_ms": 5.9}
    rows = {r["target"]: r for r in st.verdicts({"attention": {}, "model": m})}
    assert not rows["prefill 8K MFU (eager)"]["met"] and rows["prefill 8K MFU (eager)"]["measured"] == "54.9%"
    assert rows["prefill 8K MFU (compiled)"]["met"]
    assert not rows["prefill 8K time vs HF Llama (eager)"]["met"]  # 120 / 110 = 1.09x
    assert rows["prefill 8K time vs HF Llama (compiled)"]["measured"] == "0.91x"
    assert rows["prefill 32K MFU (eager)"]["met"] and rows["prefill 32K time vs HF Llama (eager)"]["met"]  # ties
    assert "prefill 32K MFU (compiled)" not in rows  # not measured: no row, no verdict
    assert rows["decode 4K: share of bandwidth floor"]["met"]  # 1.6 / 2.0 = 80%
    assert rows["decode 4K: share of bandwidth floor"]["measured"] == "80.0%"
    assert not rows["decode 4K: speed-up vs HF generate"]["met"]  # 5.9 / 2.0 = 2.95x
