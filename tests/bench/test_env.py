"""bench.env: keys, types, and values checked against independent sources."""

import json
import os
import platform
import re
from datetime import datetime

import numpy
import pytest
import scipy
import torch

import andromeda
from andromeda.bench.env import collect_env


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
