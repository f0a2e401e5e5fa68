"""The floors a GPU run is held against: measured in the same run (bf16 matmul rate, copy bandwidth) and
from the device's datasheet (dense bf16 peak, memory bandwidth); and the provenance every speed
script's JSON carries (commit, device, versions, floors).
"""

from __future__ import annotations

import subprocess
from typing import Any

import torch

from andromeda.measure.env import PACKAGE_DIR
from andromeda.measure.flops import device_bandwidth_gb_per_s, device_peak_tflops
from andromeda.measure.timing import TimingConfig, time_fn

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


def datasheet(device_name: str) -> dict[str, Any]:
    """The device's datasheet figures: dense bf16 TFLOP/s and memory GB/s (None where the device is unknown)."""
    return {"device": device_name, "datasheet_bf16_tflops": device_peak_tflops(device_name, "bf16"),
            "datasheet_gb_per_s": device_bandwidth_gb_per_s(device_name)}


def measure(device: torch.device | str = "cuda") -> dict[str, Any]:
    """Measured matmul_bf16_tflops and copy_gb_per_s, beside the datasheet's (datasheet()) for this device."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return {"matmul_bf16_tflops": matmul_tflops(device), "copy_gb_per_s": copy_gb_per_s(device), **datasheet(name)}


def floor_ms(nbytes: float, gb_per_s: float | None) -> float | None:
    """Milliseconds to move nbytes at gb_per_s (1e9 bytes/s); None when the bandwidth is unknown."""
    return None if not gb_per_s else nbytes / (gb_per_s * 1e9) * 1e3


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def provenance(env: dict[str, Any], floors: dict[str, Any] | None) -> dict[str, Any]:
    """What a speed script's JSON leads with: git_commit (and git_dirty: tracked files differ from it),
    device, versions, floors; `env` (collect_env()) follows in full."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    names = env.get("gpu_names") or []
    return {
        "git_commit": env.get("git_commit"),
        "git_dirty": None if status is None else bool(status.strip()),
        "device": (floors or {}).get("device") or (names[0] if names else env.get("cpu")),
        "versions": {k: env.get(k) for k in ("andromeda", "torch", "cuda", "cudnn", "triton", "transformers",
                                             "python") if k in env},
        "floors": floors,
        "env": env,
    }


__all__ = ["matmul_tflops", "copy_gb_per_s", "datasheet", "measure", "floor_ms", "provenance"]
