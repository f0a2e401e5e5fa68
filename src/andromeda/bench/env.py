"""The environment of a run: host, Python, torch/CUDA, devices, package versions, source commit.

Everything is JSON-serializable; anything that cannot be found is None. Optional packages are
looked up with importlib.metadata (never imported); external commands run with a timeout and
fail soft.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_CMD_TIMEOUT_S = 5.0
# distribution names whose versions are recorded (None when not installed)
_PACKAGES = {
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "transformers": ("transformers",),
    "x_transformers": ("x-transformers", "x_transformers"),
    "triton": ("triton", "pytorch-triton", "pytorch-triton-rocm", "triton-xpu"),
}


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    """stdout of a command, stripped, or None if it is missing, fails or times out."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=True,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) * 1024 / 2**30, 3)
    except OSError:
        pass
    return None


def _cpus_available() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _gpus() -> dict[str, Any]:
    out: dict[str, Any] = {"gpu_count": 0, "gpu_names": [], "gpu_mem_gib": [], "gpu_capability": [],
                           "driver": None}
    if not torch.cuda.is_available():
        return out
    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    out["gpu_count"] = n
    out["gpu_names"] = [p.name for p in props]
    out["gpu_mem_gib"] = [round(p.total_memory / 2**30, 3) for p in props]
    out["gpu_capability"] = [f"{p.major}.{p.minor}" for p in props]
    smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    out["driver"] = smi.splitlines()[0].strip() if smi else None
    return out


def _source_commit() -> str | None:
    """HEAD commit of the git checkout holding the andromeda sources, or None."""
    import andromeda

    pkg_dir = Path(andromeda.__file__).resolve().parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd=str(pkg_dir))
    return commit if commit and len(commit) >= 40 else None


def collect_env() -> dict[str, Any]:
    import andromeda

    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # a broken cuDNN install must not stop a benchmark
        cudnn = None
    env: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_available": _cpus_available(),
        "ram_gib": _ram_gib(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "cudnn": cudnn,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    env.update(_gpus())
    for key, dists in _PACKAGES.items():
        env[key] = _version(*dists)
    env["andromeda"] = andromeda.__version__
    env["git_commit"] = _source_commit()
    return env


__all__ = ["collect_env"]
