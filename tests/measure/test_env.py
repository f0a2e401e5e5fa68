"""measure.env: keys, types, and values checked against independent sources."""

import json
import os
import platform
import re
import sys
from datetime import datetime

import numpy
import pytest
import scipy
import torch

import andromeda
from andromeda.measure.env import collect_env


def test_collect_env_keys_types_values():
    env = collect_env()
    json.dumps(env, allow_nan=False)  # JSON-serializable as it stands
    expected_types = {
        "time": str, "hostname": str, "python": str, "platform": str, "cpu_count": int,
        "torch": str, "gpu_count": int, "gpu_names": list, "gpu_mem_gib": list, "andromeda": str,
        "float32_matmul_precision": str, "mps": bool,
    }
    for key, tp in expected_types.items():
        assert isinstance(env[key], tp), (key, env[key])
    for key in ("cpu", "ram_gib", "cuda", "cudnn", "driver", "triton", "numpy", "scipy", "transformers",
                "x_transformers", "git_commit", "cpu_count_available"):
        assert key in env, key
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    assert env["python"] == platform.python_version()
    assert env["cpu_count"] == os.cpu_count()
    assert env["numpy"] == numpy.__version__ and env["scipy"] == scipy.__version__
    assert env["andromeda"] == andromeda.__version__
    assert datetime.fromisoformat(env["time"]).utcoffset().total_seconds() == 0
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40,64}", env["git_commit"])
    assert env["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert len(env["gpu_names"]) == env["gpu_count"]


def test_ram_matches_sysconf():
    env = collect_env()
    if not hasattr(os, "sysconf") or env["ram_gib"] is None:
        pytest.skip("no sysconf or /proc/meminfo on this platform")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert abs(env["ram_gib"] - total) / total < 0.01


# ---- what makes timings noisy --------------------------------------------------------------------
def test_noise_fields_match_their_sources():
    from pathlib import Path

    env = collect_env()
    assert env["threads"] == torch.get_num_threads()
    assert isinstance(env["physical_cores"], int) and 1 <= env["physical_cores"] <= os.cpu_count()
    if hasattr(os, "getloadavg"):
        now = os.getloadavg()
        assert len(env["load_avg"]) == 3 and all(abs(a - b) < 1.0 for a, b in zip(env["load_avg"], now, strict=True))
    gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    assert env["cpu_governor"] == (gov.read_text().strip() if gov.exists() else None)
    if not torch.cuda.is_available():
        assert "gpu_telemetry" not in env  # omitted, not an error


def test_load_warning_only_when_the_load_exceeds_the_cpus():
    from andromeda.measure.env import load_warning

    assert load_warning([1.9, 1.0, 1.0], 2) is None
    assert load_warning(None, 2) is None
    msg = load_warning([3.5, 1.0, 1.0], 2)
    assert "3.5" in msg and "2 CPU(s)" in msg and "\n" not in msg


class _FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, fail_init=False):
        self.fail_init, self.shut = fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetClockInfo(self, h, kind):
        return {0: 1980, 1: 2619}[kind] - 100 * h

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetTemperature(self, h, kind):
        return 40 + h

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise RuntimeError("Not Supported")
        return 312_500  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000


def test_gpu_telemetry_reads_nvml_and_leaves_out_what_it_cannot(monkeypatch):
    from andromeda.measure.env import gpu_telemetry

    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    first, second = gpu_telemetry()
    assert first == {"index": 0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "max_sm_clock_mhz": 1980,
                     "temperature_c": 40, "power_w": 312.5, "power_limit_w": 700.0}
    assert second["sm_clock_mhz"] == 1880 and "power_w" not in second and fake.shut
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(fail_init=True))
    assert gpu_telemetry() is None  # no driver: no telemetry, no error
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the `gpu` extra not installed
    assert gpu_telemetry() is None


def test_threads_and_their_settings_are_recorded(tmp_path):
    """A child process started with OMP_NUM_THREADS=1 and 3 inter-op threads: its environment record says
    so (torch reads OMP_NUM_THREADS at start-up; the inter-op pool is set before any parallel work)."""
    import subprocess

    code = ("import json, torch; torch.set_num_interop_threads(3)\n"
            "from andromeda.measure.env import collect_env\n"
            "e = collect_env(); print(json.dumps({k: e[k] for k in "
            "('threads', 'interop_threads', 'omp_num_threads', 'thread_env')}))")
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["threads"] == 1 and got["interop_threads"] == 3 and got["omp_num_threads"] == "1"
    assert got["thread_env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None}
