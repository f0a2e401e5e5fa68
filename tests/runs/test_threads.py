"""The run's `threads` setting: validated in the manifest, resolved to the physical cores, fixed for a run."""

import pytest

from andromeda.errors import ConfigError
from andromeda.runs.manifest import validate

BASE = {"models": ["andromeda:tiny"], "scenarios": [{"scenario": "latency"}]}


def test_threads_is_auto_or_a_bounded_integer():
    assert validate(BASE).threads == "auto"
    assert validate({**BASE, "threads": 1}).threads == 1
    assert validate({**BASE, "threads": 4096}).threads == 4096
    for bad in (0, -1, 4097, True, 2.0, "4", "Auto", None, [2]):
        with pytest.raises(ConfigError) as e:
            validate({**BASE, "threads": bad})
        msg = str(e.value)
        assert msg.startswith("manifest: threads: must be auto") and "1 to 4096" in msg and "\n" not in msg


def test_a_run_fixes_threads_records_them_and_restores_them(tmp_path):
    import torch

    from andromeda.records import RecordStore
    from andromeda.runs.runner import run

    before = torch.get_num_threads()
    m = validate({**BASE, "device": "cpu", "threads": 1, "report": {"formats": ["csv"]},
                  "timing": {"warmup": 0, "min_runs": 2, "max_runs": 2, "budget_s": 0.01},
                  "scenarios": [{"scenario": "latency", "mode": ["forward"], "seq_len": [8]}]})
    run(m, tmp_path / "run")
    assert torch.get_num_threads() == before
    (rec,) = RecordStore(tmp_path / "run" / "results.jsonl").read()
    assert rec.env["threads"] == 1 and rec.env["threads_setting"] == 1
    assert rec.info["load"]["threads"] == 1  # what torch ran the case with
    for key in ("load_avg", "cpu_governor", "physical_cores", "load_warning"):
        assert key in rec.env


def test_auto_is_the_physical_cores_lscpu_counts():
    import os
    import shutil
    import subprocess

    from andromeda.measure.env import physical_cores, resolve_threads

    if shutil.which("lscpu") is None or len(os.sched_getaffinity(0)) != os.cpu_count():
        pytest.skip("needs lscpu and an unrestricted CPU affinity")
    rows = [ln.split(",") for ln in subprocess.run(["lscpu", "-p=CORE,SOCKET,ONLINE"], capture_output=True,
                                                    text=True, check=True).stdout.splitlines()
            if ln and not ln.startswith("#")]
    cores = {(core, sock) for core, sock, online in rows if online.strip().upper() in ("Y", "")}
    assert physical_cores() == len(cores) == resolve_threads("auto")
    assert resolve_threads(3) == 3
