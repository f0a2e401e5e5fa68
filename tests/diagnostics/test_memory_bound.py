"""Diagnostics keep memory bounded: peak memory of a diagnostics pass over that of a plain
forward + backward, measured by benchmarks/diagnostics_memory.py in fresh processes (RSS on CPU)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnostics_memory.py"


def test_diagnostics_peak_memory_ratio_at_512_tokens():
    spec = importlib.util.spec_from_file_location("diagnostics_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the small preset reduced to 2 layers and an 8192-token vocabulary, 512 tokens
    res = mod.compare("small", {"depth": 2, "num_tokens": 8192}, seq=512, batch=1, device="cpu", parallel=True)
    assert res["plain"]["peak_mib"] > 50, res
    assert res["ratio"] < 1.5, res
