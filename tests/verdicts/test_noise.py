"""The noise-aware gate (verdicts/noise.py) and the busy-machine probe (measure/host_load.py), on synthetic samples.

Verdicts are checked against the rule written out by hand: a time difference is a regression only when it
is significant, beyond the speed threshold and beyond the A/A noise floor, and neither side was measured
on a busy machine; otherwise it is "inconclusive (noisy)" (or not significant at all).
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from andromeda.cli import main
from andromeda.measure.host_load import LoadProbe, busy_seconds, noisy_reason
from andromeda.records import Record
from andromeda.verdicts.comparison import compare_samples
from andromeda.verdicts.noise import Floors, NoiseFloor, gate
from andromeda.verdicts.regress import compare_runs

CV5 = math.sqrt(math.log(1 + 0.05**2))  # lognormal sigma of a 5% coefficient of variation


def _lognormal(rng, median, n=40, sigma=CV5):
    return rng.lognormal(np.log(median), sigma, n)


def test_reach_is_how_far_the_aa_ci_goes_from_one():
    assert NoiseFloor(1.0, 0.8, 1.1, 0.3, 4, 4, "halves").reach == pytest.approx(1 / 0.8 - 1)
    assert NoiseFloor(1.0, 0.95, 1.3, 0.35, 4, 4, "halves").reach == pytest.approx(0.3)
    assert math.isnan(NoiseFloor(1.0, math.nan, math.nan, math.nan, 4, 4, "halves").reach)


def test_a_clear_slowdown_beyond_floor_and_threshold_is_a_regression_and_inside_the_floor_is_not():
    rng = np.random.default_rng(0)
    old, new = _lognormal(rng, 1.0), _lognormal(rng, 1.3)
    ratio = np.median(new) / np.median(old)  # the reference: ~1.3, far beyond 5% noise
    assert 1.2 < ratio < 1.45
    comp = compare_samples(old, new, "latency_ms")
    assert comp.verdict == "slower" and comp.outcome == "worse"
    # a floor the ratio clears (10%): still a regression
    assert gate(comp, [0.10, None], [None, None]).outcome == "worse"
    # a floor the ratio lies inside (either side's: 60%): inconclusive, with the floor in the reason
    for floors in ([0.60, 0.05], [0.05, 0.60], [None, 0.60]):
        noisy = gate(comp, floors, [None, None])
        assert noisy.verdict == "inconclusive (noisy)" and noisy.outcome == "inconclusive"
        assert noisy.noise_floor == 0.60 and "noise floor (+-60.0%)" in noisy.reason
    # a flagged side: inconclusive whatever the floor
    flagged = gate(comp, [None], [None, "NEW: other processes used 1.00 of 2 CPU(s)"])
    assert flagged.outcome == "inconclusive" and "NEW: other processes" in flagged.reason


def test_the_floor_works_both_ways_and_leaves_no_difference_alone():
    rng = np.random.default_rng(1)
    old = _lognormal(rng, 1.0)
    faster = compare_samples(old, _lognormal(rng, 1 / 1.3), "latency_ms")
    assert faster.outcome == "better"
    assert gate(faster, [0.6], [None]).outcome == "inconclusive"  # 1.3x faster is within a 60% floor too
    assert gate(faster, [0.1], [None]).outcome == "better"
    same = compare_samples(old, _lognormal(rng, 1.0), "latency_ms")
    assert same.verdict == "no significant difference"
    assert gate(same, [0.6], [None]).verdict == "no significant difference"


def test_memory_is_not_gated_by_cpu_noise():
    comp = compare_samples([100.0], [120.0], "peak_mib")
    assert comp.verdict == "more memory"
    assert gate(comp, [0.9], ["OLD: busy"]).verdict == "more memory"


def _rec(case, samples, noisy=None, metric="latency_ms"):
    return Record(case_id=case, scenario="latency", source="andromeda:tiny", params={"seq_len": int(case[1:])},
                  metrics={metric: float(np.median(samples))}, samples={metric: [float(x) for x in samples]},
                  info={"noisy": noisy} if noisy else {})


def test_a_run_that_drifted_has_a_wide_floor_and_its_differences_are_inconclusive(capsys):
    rng = np.random.default_rng(2)
    cases = [f"n{n}" for n in (16, 32, 64, 128)]
    # OLD drifted: its second half ran 1.6x slower than its first (another job started mid-case)
    old = [_rec(c, np.concatenate([_lognormal(rng, 1.0, 20), _lognormal(rng, 1.6, 20)])) for c in cases]
    new = [_rec(c, _lognormal(rng, 1.3 * 1.3, 40)) for c in cases]  # 1.3x OLD's overall median
    for r in old:  # the reference: OLD's halves differ by ~1.6x, so its A/A reach is at least ~0.5
        s = r.samples["latency_ms"]
        assert np.median(s[20:]) / np.median(s[:20]) > 1.45
    floors = Floors(old, ["latency_ms"])
    assert all(floors.case(r, "latency_ms") > 0.45 for r in old)
    res = compare_runs(old, new)
    assert not res.regressions and res.exit_code == 0
    assert {c.verdict for c in res.comparisons} == {"inconclusive (noisy)"}
    assert res.noise_floor_old > 0.45 and res.noise_floor_new < 0.2
    # the same slowdown from a quiet OLD is a regression
    quiet = [_rec(c, _lognormal(rng, 1.3, 40)) for c in cases]
    assert len(compare_runs(quiet, new).regressions) == len(cases)


def test_busy_flags_make_the_cli_gate_pass(tmp_path, capsys):
    from andromeda.records import RecordStore

    rng = np.random.default_rng(3)
    cases = ["n16", "n32", "n64"]
    old = [_rec(c, _lognormal(rng, 1.0)) for c in cases]
    busy = "other processes used 1.98 of 2 CPU(s) while it ran with 2 thread(s) (at most 0.5 spare)"
    new = [_rec(c, _lognormal(rng, 100.0), noisy=busy if c != "n64" else None) for c in cases]  # 100x slower
    for name, recs in (("old", old), ("new", new)):
        RecordStore(tmp_path / name / "results.jsonl").append(recs)
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == 1  # n64 was quiet: a regression
    text = capsys.readouterr().out
    assert "regressions: 1" in text and "seq_len=64" in text and "2 inconclusive (noisy)" in text
    assert "2 comparison(s) of cases measured while other processes competed" in text
    new[-1].info["noisy"] = busy
    RecordStore(tmp_path / "new2" / "results.jsonl").append(new)
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new2")]) == 0
    assert "regressions: 0" in capsys.readouterr().out


# ---- the probe ----------------------------------------------------------------------------------
def test_busy_seconds_adds_the_busy_ticks_of_the_given_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 100 5 20 1000 7 1 2 3 0 0\n"   # busy: 100+5+20+1+2+3 = 131 (idle, iowait not)
                    "cpu1 10 0 10 500 0 0 0 0 0 0\n"     # busy: 20
                    "intr 12345\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds({0}, str(stat)) == pytest.approx(131 / hz)
    assert busy_seconds(None, str(stat)) == pytest.approx(151 / hz)
    assert busy_seconds({5}, str(stat)) is None
    assert busy_seconds(None, str(tmp_path / "missing")) is None


def test_noisy_reason_is_other_work_beyond_the_spare_cpus():
    assert noisy_reason({"foreign_cpus": 1.0, "cpus": 2, "threads": 2}) is not None
    assert noisy_reason({"foreign_cpus": 0.3, "cpus": 2, "threads": 2}) is None  # below the 0.5 CPU allowance
    assert noisy_reason({"foreign_cpus": 2.5, "cpus": 4, "threads": 1}) is None  # 3 CPUs were left spare
    assert "3.50 of 4 CPU(s)" in noisy_reason({"foreign_cpus": 3.5, "cpus": 4, "threads": 1})
    assert noisy_reason({"foreign_cpus": None, "cpus": 2, "threads": 2}) is None  # no /proc/stat: no evidence


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_probe_sees_spinning_processes():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.2)  # let them start
        probe = LoadProbe(threads=1)
        time.sleep(0.5)  # this process idles: nearly all busy time is theirs
        load = probe.stop()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    cpus = len(os.sched_getaffinity(0))
    assert load["foreign_cpus"] >= min(2, cpus) * 0.6
    assert noisy_reason(load) is not None or cpus >= 3  # 3+ CPUs leave the two spinners room
