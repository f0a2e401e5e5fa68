"""Runner: artifacts from the quick preset, crash safety (SIGKILL + resume), OOM isolation."""

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from andromeda.cli import main
from andromeda.records import RecordStore
from andromeda.runs.manifest import load_manifest, validate
from andromeda.runs.plan import plan
from andromeda.runs.runner import run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    start = time.perf_counter()
    code = main(["run", "--preset", "quick", "--device", "cpu", "--out", str(out)])
    return out, code, time.perf_counter() - start


def test_quick_preset_writes_every_artifact(quick_run):
    out, code, seconds = quick_run
    assert code == 0
    records = RecordStore(out / "results.jsonl").read()
    cases = plan(load_manifest(out / "manifest.yml"))  # the manifest as run (device override included)
    assert {c.case_id for c in cases} <= {r.case_id for r in records}
    assert all(r.status == "ok" for r in records), [r.message for r in records if r.status != "ok"]
    for name in ("report.html", "report.md", "report.json", "tables.tex", "manifest.yml"):
        assert (out / name).stat().st_size > 0, name
    for scen in ("latency", "throughput", "generation", "memory", "scaling"):
        assert (out / "csv" / f"{scen}.csv").exists()
    assert len(list((out / "charts").glob("*.png"))) >= 6


def test_csv_and_json_hold_the_measured_values(quick_run):
    out, _, _ = quick_run
    records = {r.case_id: r for r in RecordStore(out / "results.jsonl") if r.scenario == "latency"}
    with open(out / "csv" / "latency.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    for row in rows:
        rec = records[row["case_id"]]
        assert float(row["metrics.latency_ms"]) == pytest.approx(rec.metrics["latency_ms"], rel=1e-9)
        assert float(row["metrics.tokens_per_s"]) == pytest.approx(rec.metrics["tokens_per_s"], rel=1e-9)
        # tokens/s is what the median latency says it is
        b, n = rec.params["batch"], rec.params["seq_len"]
        assert rec.metrics["tokens_per_s"] == pytest.approx(b * n / (rec.metrics["latency_ms"] / 1e3), rel=1e-9)
    report = json.loads((out / "report.json").read_text())
    ids = {r["case_id"] for r in report["records"]}
    assert set(records) <= ids


def test_report_rebuilds_from_jsonl_alone(quick_run, tmp_path):
    out, _, _ = quick_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.jsonl").write_bytes((out / "results.jsonl").read_bytes())
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").exists() and (copy / "tables.tex").exists()


def _manifest(tmp_path, **scenario):
    m = {"name": "t", "models": ["andromeda:tiny"], "device": "cpu",
         "timing": {"warmup": 1, "min_runs": 3, "max_runs": 5, "budget_s": 0.3, "target_rel_ci": None},
         "report": {"formats": ["csv"]}, "scenarios": [scenario]}
    p = tmp_path / "m.yml"
    p.write_text(yaml.safe_dump(m))
    return p


def test_sigkill_then_resume_completes_without_repeats(tmp_path):
    p = _manifest(tmp_path, scenario="latency", mode=["forward"], batch=[1, 2], seq_len=[16, 32, 48, 64, 80, 96])
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "andromeda.cli", "run", str(p), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = RecordStore(results).read()
    total = len(plan(load_manifest(p)))
    assert 3 <= len(before) < total, "the kill should land mid-run"
    assert main(["run", str(p), "--out", str(out), "--resume"]) == 0
    after = RecordStore(results).read()
    ids = [r.case_id for r in after]
    assert len(ids) == len(set(ids)) == total  # every case once: nothing repeated, nothing missing
    assert [r.case_id for r in after[: len(before)]] == [r.case_id for r in before]


def test_resume_after_a_torn_last_line_reruns_that_case(tmp_path):
    p = _manifest(tmp_path, scenario="latency", batch=[1], seq_len=[8, 16, 24])
    out = tmp_path / "run"
    assert main(["run", str(p), "--out", str(out)]) == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    torn = json.loads(lines[-1])
    results.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash mid-write
    assert main(["run", str(p), "--out", str(out), "--resume"]) == 0
    after = RecordStore(results).read()
    assert sorted(r.params["seq_len"] for r in after) == [8, 16, 24]  # every case once, none lost
    assert torn["case_id"] in {r.case_id for r in after}  # the torn case ran again ...
    assert results.read_text().count("\n") == len(lines) + 1  # ... its record after the fragment, on its own line
    assert main(["report", str(out)]) == 0


def test_existing_run_dir_needs_resume(tmp_path, capsys):
    p = _manifest(tmp_path, scenario="latency", batch=[1], seq_len=[8])
    out = tmp_path / "run"
    assert main(["run", str(p), "--out", str(out)]) == 0
    assert main(["run", str(p), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


OOM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch, andromeda.cli  # import first: the limit is for the measurement, not for loading
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1536 << 20), resource.RLIM_INFINITY))
    sys.exit(andromeda.cli.main(sys.argv[1:]))
""")


def test_real_allocator_failure_becomes_oom_record_and_sweep_goes_on(tmp_path):
    # batch 2048 x 256 tokens needs > 2 GiB of attention scores: over the 1.5 GiB address-space limit
    p = _manifest(tmp_path, scenario="throughput", batch=[1, 2048, 4096, 2], seq_len=[256])
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", OOM_SCRIPT, "run", str(p), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    by_batch = {rec.params["batch"]: rec for rec in RecordStore(out / "results.jsonl")}
    assert by_batch[2048].status == "oom" and by_batch[2048].message
    assert by_batch[4096].status == "skipped" and "out of memory" in by_batch[4096].message
    assert by_batch[1].status == "ok" and by_batch[2].status == "ok"  # the sweep went on after the OOM


def test_errors_are_isolated(tmp_path, monkeypatch):
    from andromeda.scenarios import latency

    calls = {"n": 0}
    original = latency.Latency.run

    def flaky(self, bundle, p, ctx):
        calls["n"] += 1
        if p["seq_len"] == 16:
            raise ValueError("planted failure")
        return original(self, bundle, p, ctx)

    monkeypatch.setattr(latency.Latency, "run", flaky)
    m = validate(yaml.safe_load(_manifest(tmp_path, scenario="latency", batch=[1], seq_len=[8, 16, 24]).read_text()))
    res = run(m, tmp_path / "run")
    recs = {r.params["seq_len"]: r for r in RecordStore(tmp_path / "run" / "results.jsonl")}
    assert recs[16].status == "error" and "planted failure" in recs[16].message
    assert recs[8].status == recs[24].status == "ok" and res.counts["error"] == 1


def test_too_long_sequence_is_skipped_with_reason(tmp_path):
    m = validate(yaml.safe_load(_manifest(tmp_path, scenario="latency", batch=[1], seq_len=[512]).read_text()))
    run(m, tmp_path / "run")
    (rec,) = RecordStore(tmp_path / "run" / "results.jsonl").read()
    assert rec.status == "skipped" and "max_seq_len" in rec.message


def test_source_kinds(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    m = validate({"models": ["andromeda:tiny?depth=1", "hf:matched:tiny", "xt:tiny",
                             "hf:gpt2?n_layer=1&n_embd=32&n_head=2&vocab_size=300"],
                  "device": "cpu", "report": {"formats": ["csv"]},
                  "timing": {"warmup": 1, "min_runs": 2, "max_runs": 3, "budget_s": 0.1},
                  "scenarios": [{"scenario": "latency", "batch": [1], "seq_len": [16]},
                                {"scenario": "generation", "prompt_len": [8], "gen_len": [4],
                                 "use_cache": [True, False]}]})
    run(m, tmp_path / "run")
    recs = RecordStore(tmp_path / "run" / "results.jsonl").read()
    status = {(r.source, r.scenario, r.params.get("use_cache")): r.status for r in recs}
    for src in m.models:
        assert status[(src, "latency", None)] == "ok", [r.message for r in recs if r.source == src]
        assert status[(src, "generation", False)] == "ok"
    assert status[("xt:tiny", "generation", True)] == "skipped"
    assert status[("hf:matched:tiny", "generation", True)] == "ok"


def test_hf_source_from_local_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from andromeda.sources.models import build

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path / "ckpt")
    bundle = build(f"hf:{tmp_path / 'ckpt'}", torch.device("cpu"), torch.float32)
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.allclose(bundle.logits(tokens), ref(tokens).logits, atol=1e-5)
    assert bundle.facts.params == sum(p.numel() for p in ref.parameters())
    assert (bundle.facts.layers, bundle.facts.kv_heads, bundle.facts.head_dim) == (1, 1, 16)


def test_saved_manifest_reads_back_as_written(tmp_path):
    """The run's manifest.yml keeps strings that YAML 1.2 would read as numbers or bools (a name of '1e5',
    a description of 'yes') as strings: resuming or rebuilding the report from it sees the same manifest."""
    p = _manifest(tmp_path, scenario="latency", mode=["forward"], batch=[1], seq_len=[8])
    m = yaml.safe_load(p.read_text())
    m.update(name="1e5", description="yes")
    p.write_text(json.dumps(m))  # JSON is YAML: both strings quoted, as a user would have to write them
    out = tmp_path / "run"
    assert main(["run", str(p), "--out", str(out)]) == 0
    again = load_manifest(out / "manifest.yml")
    assert again.name == "1e5" and again.description == "yes"
    assert again == load_manifest(p)
