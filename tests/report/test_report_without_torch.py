"""`andromeda report RUN_DIR` on a machine without torch: a child process in which importing torch
fails rebuilds the report, and the comparison of a run with a compare: section, from the run directory."""

import json
import subprocess
import sys
import textwrap

import yaml

from andromeda.cli import main
from andromeda.records import Record, RecordStore

NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:  # importing torch (or any torch.*) fails, as on a machine without it
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoTorch())
    from andromeda.cli import main
    code = main(sys.argv[1:])
    assert "torch" not in sys.modules, "torch was imported after all"
    sys.exit(code)
""")


def _report_without_torch(run_dir, *args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, "report", str(run_dir), *args],
                          capture_output=True, text=True, timeout=300)


def test_report_of_hand_written_records_needs_no_torch(tmp_path):
    manifest = {"name": "by-hand", "models": ["andromeda:tiny"], "device": "cpu",
                "scenarios": [{"scenario": "latency", "batch": [1], "seq_len": [8, 16]}]}
    (tmp_path / "manifest.yml").write_text(yaml.safe_dump(manifest))
    RecordStore(tmp_path / "results.jsonl").append(
        Record(case_id=f"c{n}", scenario="latency", source="andromeda:tiny", params={"batch": 1, "seq_len": n},
               metrics={"latency_ms": n / 8}, samples={"latency_ms": [n / 8, n / 8 * 1.01]}) for n in (8, 16))
    r = _report_without_torch(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "csv" / "latency.csv").exists()


def test_report_rebuilds_a_runs_comparison_without_torch(tmp_path, monkeypatch):
    from andromeda.scenarios import latency

    base, cand = "andromeda:tiny", "andromeda:tiny?depth=1"  # different shapes: the check needs the facts

    def planted(self, bundle, p, ctx):  # samples by source, no timing: the verdict is known
        ms = {base: 1.0, cand: 2.0}[ctx.case.source]
        return [ctx.record({"latency_ms": ms}, samples={"latency_ms": [ms * (1 + 0.01 * (i % 5)) for i in range(20)]})]

    monkeypatch.setattr(latency.Latency, "run", planted)
    m = {"name": "cmp", "models": [base, cand], "device": "cpu", "report": {"formats": ["csv"]},
         "scenarios": [{"scenario": "latency", "batch": [1], "seq_len": [8]}],
         "compare": {"baseline": base, "allow_mismatch": True, "gate": True}}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(m))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "m.yml"), "--out", str(run)]) == 1  # the candidate is 2x slower
    with_torch = json.loads((run / "compare" / "compare.json").read_text())
    (run / "compare" / "compare.json").unlink()

    r = _report_without_torch(run, "--formats", "json,md")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not rebuilt" not in r.stderr, r.stderr
    rebuilt = json.loads((run / "compare" / "compare.json").read_text())
    keep = ("ratio", "verdict", "params_ratio", "notes")  # the shapes came from the run's facts.json, not torch
    assert [{k: c[k] for k in keep} for c in rebuilt["comparisons"]] == \
        [{k: c[k] for k in keep} for c in with_torch["comparisons"]]
    assert rebuilt["comparisons"][0]["params_ratio"] < 1 and rebuilt["exit_code"] == 1
