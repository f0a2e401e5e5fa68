"""A/A under load: the `quick` preset twice, once with both cores kept busy by spinning processes, then
`andromeda compare A B`: a busy machine must never read as a regression (inconclusive is allowed), and
the gate exits 0. Issue 24's audit got 26 false "regressions" (one "125x slower, p = 0.00018") this way.

The preset runs as it is, made smaller with --set (one or two points per scenario, 8 timed runs each,
a JSON-only report) to stay within about a minute on a 2-core CPU. The assertions are on verdicts and
flags, never on times.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from andromeda.cli import main
from andromeda.records import RecordStore

SMALL = [
    "timing.warmup=1", "timing.min_runs=8", "timing.max_runs=8", "timing.budget_s=0.02",
    "scenarios.0.mode=[forward, fwd_bwd]", "scenarios.0.batch=[1]", "scenarios.0.seq_len=[64]",
    "scenarios.1.batch=[1, 4]",
    "scenarios.2.gen_len=[8]", "scenarios.2.use_cache=[true]",
    "scenarios.3.batch=[1]", "scenarios.3.seq_len=[64]",
    "scenarios.4.size=[32, 64, 128]",
    "report.formats=[json]",
]


def _quick(out) -> int:
    argv = ["run", "--preset", "quick", "--device", "cpu", "--out", str(out)]
    for s in SMALL:
        argv += ["--set", s]
    return main(argv)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")
@pytest.mark.real_load
def test_quick_preset_aa_under_load_reports_no_regression(tmp_path, capsys):
    start = time.perf_counter()
    assert _quick(tmp_path / "a") == 0
    n_busy = max(2, len(os.sched_getaffinity(0)))  # every CPU of this process kept busy
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_busy)]
    try:
        assert _quick(tmp_path / "b") == 0
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    err = capsys.readouterr().err
    busy = RecordStore(tmp_path / "b" / "results.jsonl").read()
    flagged = [r for r in busy if r.info.get("noisy")]
    assert flagged and "case(s) ran while other processes competed for the CPU" in err
    assert all(r.info["load"]["foreign_cpus"] > 0.5 for r in flagged)
    assert {r.env["threads"] for r in busy} == {RecordStore(tmp_path / "a" / "results.jsonl").read()[0].env["threads"]}

    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "latency_ms",
                 "--out", str(tmp_path / "cmp"), "--formats", "json"])
    text = capsys.readouterr().out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["comparisons"], text  # the runs were compared, case by case
    assert data["regressions"] == 0, text
    assert not [c for c in data["comparisons"] if c["outcome"] == "worse"]
    assert not data["status_changes"]
    assert code == 0 and "result: PASS" in text
    print(f"noisy A/A: {time.perf_counter() - start:.0f} s")  # shown with -s
