"""benchmarks/context_parallel.py --smoke through torchrun (2 gloo processes on the CPU): the JSON's rows and
their arithmetic."""

import json
import socket
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "context_parallel.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_smoke_two_ranks(tmp_path):
    out = tmp_path / "cp.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(_free_port()), str(BENCH), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "args", "rows"} <= set(res)
    for row, n in zip(res["rows"], [128, 256], strict=True):
        assert row["n"] == n and row["world"] == 2
        assert row["prefill_ms"] == sorted(row["prefill_ms_runs"])[len(row["prefill_ms_runs"]) // 2]
        assert all(0 <= c <= t for c, t in zip(row["rank_comm_ms"], row["rank_ms_timed_run"], strict=True))
        assert row["balance_max_over_min"] >= 1
        assert row["scaling_efficiency"] == row["single_device_ms"] / (2 * row["prefill_ms"])
        chunks = sorted(tuple(c) for rank in row["chunks"] for c in rank)
        assert chunks[0][0] == 0 and chunks[-1][1] == n
