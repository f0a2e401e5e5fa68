"""The floors a GPU run is held against, measured in the same run: bf16 matmul rate and copy bandwidth."""

from __future__ import annotations

import torch

from andromeda.bench.timing import TimingConfig, time_fn

_TIMING = TimingConfig(warmup=10, min_runs=50, max_runs=300, budget_s=2.0, target_rel_ci=0.01)


def matmul_tflops(device: torch.device | str = "cuda", n: int = 8192, dtype: torch.dtype = torch.bfloat16, *,
                  timing: TimingConfig = _TIMING, best: bool = False) -> float:
    """TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) from the median run, or the fastest with best=True."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, timing)
    ms = min(t.samples_ms) if best else t.median_ms
    return 2 * n**3 / (ms / 1e3) / 1e12


def copy_gb_per_s(device: torch.device | str = "cuda", nbytes: int = 2**30) -> float:
    """Median device-to-device copy bandwidth, bytes read + written, GB/s (1e9 bytes/s)."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    ms = time_fn(lambda: dst.copy_(src), device, _TIMING).median_ms
    return 2 * src.nbytes / (ms / 1e3) / 1e9


def measure(device: torch.device | str = "cuda") -> dict[str, float]:
    return {"matmul_bf16_tflops": matmul_tflops(device), "copy_gb_per_s": copy_gb_per_s(device)}


__all__ = ["matmul_tflops", "copy_gb_per_s", "measure"]
