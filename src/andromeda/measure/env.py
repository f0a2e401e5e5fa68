"""The environment of a run: host, Python, torch/CUDA, devices, package versions, source commit, and
what decides how noisy its timings are: torch's thread count, the physical cores, the load average,
the CPU frequency governor and, on NVIDIA GPUs, clocks, temperature and power (NVML).

Threads, so that a CPU result can be reproduced: `threads` (torch.get_num_threads(), the intra-op
pool a forward pass runs on), `interop_threads` (torch.get_num_interop_threads()) and the
environment variables the OpenMP / BLAS runtimes read at start-up (`thread_env`: OMP_NUM_THREADS,
MKL_NUM_THREADS, OPENBLAS_NUM_THREADS; None when unset). `omp_num_threads` repeats OMP_NUM_THREADS
at the top level, where comparisons of environments look.

`kernel_tuning`: the Triton kernels' active settings (andromeda.model.backends.tuning_record(): the flash
attention's and the fused decode step's, by backend), so a result says which tuning it ran with.

Everything is JSON-serializable; anything that cannot be found is None (GPU telemetry: left out).
Optional packages are looked up with importlib.metadata (never imported), except NVML's bindings
(`pynvml`, the `gpu` extra: nvidia-ml-py), imported lazily where present; external commands run with
a timeout and fail soft.
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

from andromeda.version import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the andromeda package; its git checkout's commit is recorded
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


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyperthread siblings count once), from
    /sys topology; the usable logical CPUs where that is not readable."""
    cpus = _cpus_available() or 1
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return cpus
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return cpus
    return max(1, min(len(cores), cpus))


def resolve_threads(setting: str | int | None) -> int:
    """The manifest's `threads` as a count: "auto" (or None) is the physical cores."""
    return physical_cores() if setting in (None, "auto") else int(setting)


def load_average() -> list[float] | None:
    """[1 min, 5 min, 15 min] load average, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_warning(load: list[float] | None, cpus: int | None) -> str | None:
    """A one-line warning when the 1-minute load average exceeds the usable CPUs, else None."""
    if not load or not cpus or load[0] <= cpus:
        return None
    return (f"the 1-minute load average is {load[0]:g} on {cpus} CPU(s): other work competes for the CPU, "
            "so timings are noisy (comparisons of noisy cases are inconclusive)")


def cpu_governor() -> str | None:
    """cpufreq scaling governor of CPU 0 (performance, powersave, ...), or None where there is no cpufreq."""
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip() or None
    except OSError:
        return None


def gpu_telemetry() -> list[dict[str, Any]] | None:
    """Per NVIDIA GPU: SM and memory clocks (MHz), temperature (C), power draw and limit (W), from NVML;
    None when the bindings (the `gpu` extra: nvidia-ml-py) or the driver are missing. A field NVML
    will not give is left out."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: no telemetry
        return None
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            reads = {
                "sm_clock_mhz": lambda h=h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_mhz": lambda h=h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "max_sm_clock_mhz": lambda h=h: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "temperature_c": lambda h=h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "power_w": lambda h=h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "power_limit_w": lambda h=h: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            }
            gpu: dict[str, Any] = {"index": i}
            for key, read in reads.items():
                try:
                    gpu[key] = read()
                except Exception:  # noqa: BLE001 - a field this GPU or driver does not report
                    continue
            out.append(gpu)
    except Exception:  # noqa: BLE001
        return out or None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return out


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
    commit = _run(["git", "rev-parse", "HEAD"], cwd=str(PACKAGE_DIR))
    return commit if commit and len(commit) >= 40 else None


def collect_env() -> dict[str, Any]:
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
    env["andromeda"] = __version__
    env["git_commit"] = _source_commit()
    from andromeda.model.backends.settings import tuning_record

    env["kernel_tuning"] = tuning_record()
    env.update(noise_env(env["cpu_count_available"]))
    return env


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env() -> dict[str, Any]:
    """torch's intra-op and inter-op thread counts and the thread environment variables (None when unset)."""
    env = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads": env["OMP_NUM_THREADS"], "thread_env": env}


def noise_env(cpus: int | None) -> dict[str, Any]:
    """What makes timings noisy, now: threads (and their settings), physical cores, load average (and its
    warning), governor, GPUs."""
    load = load_average()
    out: dict[str, Any] = {**thread_env(), "physical_cores": physical_cores(),
                           "load_avg": load, "cpu_governor": cpu_governor(), "load_warning": load_warning(load, cpus)}
    telemetry = gpu_telemetry() if torch.cuda.is_available() else None
    if telemetry:
        out["gpu_telemetry"] = telemetry
    return out


__all__ = ["collect_env", "noise_env", "thread_env", "THREAD_ENV_VARS", "physical_cores", "resolve_threads",
           "load_average", "load_warning",
           "cpu_governor", "gpu_telemetry"]
