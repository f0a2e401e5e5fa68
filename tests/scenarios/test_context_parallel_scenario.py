"""The context_parallel scenario: run through the suite's torchrun launcher with 1 and 2 gloo processes on the CPU
(tiny model), its rows against the single-process forward and their derived fields recomputed from the raw
per-rank samples; one-process paths in this process (out of memory, skips, the entry's own model and dtype);
config errors; the charts."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from matplotlib.figure import Figure

from andromeda.errors import ConfigError
from andromeda.measure.facts import facts_from_config
from andromeda.measure.flops import forward_flops
from andromeda.measure.timing import TimingConfig
from andromeda.model import from_name
from andromeda.records import Record, RecordStore
from andromeda.report.build import build_report
from andromeda.report.chart_specs_distributed import SPEC_MS, cp_comm_share, cp_efficiency, cp_latency_vs_ranks
from andromeda.report.load import frame
from andromeda.runs.context import Case, RunContext
from andromeda.runs.manifest import check_resources, validate
from andromeda.runs.runner import run
from andromeda.scenarios import context_parallel as cp
from andromeda.scenarios.multiprocess import DistInfo
from andromeda.sources.models import build

LENGTHS = (48, 96)
ENTRY = {"scenario": "context_parallel", "ranks": [1, 2], "seq_lens": list(LENGTHS), "warmup": 1, "iters": 3,
         "comm_runs": 2, "check_len": 64}


# ---- end to end: 1 and 2 gloo processes through the launcher ---------------------------------------
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp") / "run"
    m = validate({"name": "cp", "models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["md"]},
                  "launcher": {"type": "torchrun", "nproc": 2, "cpu_threads": 1}, "scenarios": [ENTRY]})
    run(m, out)
    build_report(out, ["md"])
    return out, RecordStore(out / "results.jsonl").read()


def _rows(records):
    return {(r.params["ranks"], r.params["seq_len"]): r for r in records if not r.params.get("efficiency")}


def test_every_row_equals_the_single_process_forward(launched):
    _, records = launched
    rows = _rows(records)
    assert set(rows) == {(n, s) for n in (1, 2) for s in LENGTHS}
    assert all(r.status == "ok" for r in records), [r.message for r in records]
    for (n, _), r in rows.items():
        assert r.info["world_size"] == n and r.params["model"] == "andromeda:tiny" and r.params["dtype"] == "float32"
        # the sharded logits of all 64 check positions against the model's own forward, float32
        assert r.metrics["logits_max_abs_diff"] <= 1e-5 * r.metrics["logits_max_abs"]
        assert r.metrics["matches_single"] == 1.0 and r.info["check_rtol"] == 1e-4
        if n == 2:  # two chunks per rank: one early, one late
            assert sorted(tuple(c) for rank in r.info["chunks"] for c in rank)[0] == (0, r.params["seq_len"] // 4)


def test_derived_fields_follow_their_formulas_from_the_raw_samples(launched):
    _, records = launched
    facts = facts_from_config(from_name("tiny"))
    for (n, seq), r in _rows(records).items():
        s = {k: [np.array(r.samples[f"{k}@rank{i}"]) for i in range(n)] for k in cp._PER_RANK}
        assert f"latency_ms@rank{n}" not in r.samples
        assert all(len(x) == 3 for x in s["latency_ms"]) and all(len(x) == (3 if n == 1 else 2) for x in s["total_ms"])
        runs = np.max(np.array(s["latency_ms"]), axis=0)  # a prefill ends when its slowest rank ends
        assert r.samples["latency_ms"] == pytest.approx(runs.tolist())
        assert r.metrics["latency_ms"] == pytest.approx(float(np.median(runs)))
        assert r.metrics["latency_ms_ci_low"] <= r.metrics["latency_ms"] <= r.metrics["latency_ms_ci_high"]
        assert r.metrics["tokens_per_s"] == pytest.approx(seq / (float(np.median(runs)) / 1e3))
        flops = forward_flops(facts, 1, seq, lm_head="last").total
        assert r.metrics["tflops_per_rank"] == pytest.approx(flops / (float(np.median(runs)) / 1e3) / 1e12 / n)
        for total, comm, compute in zip(s["total_ms"], s["comm_ms"], s["compute_ms"], strict=True):
            assert compute == pytest.approx(total - comm)
        medians = [float(np.median(c)) for c in s["compute_ms"]]
        assert r.metrics["compute_ms"] == pytest.approx(np.mean(medians))
        assert r.metrics["compute_ms_max_over_mean_ranks"] == pytest.approx(max(medians) / np.mean(medians))
        shares = [float(np.median(c / t)) for c, t in zip(s["comm_ms"], s["total_ms"], strict=True)]
        assert r.metrics["comm_share"] == pytest.approx(float(np.median(shares)))
        assert r.metrics["comm_share_max"] == pytest.approx(max(shares))
        if n == 1:  # the model's own forward: no collective, one rank
            assert r.metrics["comm_ms"] == 0 and r.metrics["compute_ms_max_over_mean_ranks"] == 1
            assert s["total_ms"][0].tolist() == r.samples["latency_ms"]
        else:
            assert 0 < r.metrics["comm_share"] < 1


def test_scaling_efficiency_against_one_rank(launched):
    _, records = launched
    rows = _rows(records)
    eff = {(r.params["ranks"], r.params["seq_len"]): r for r in records if r.params.get("efficiency")}
    assert set(eff) == set(rows)
    for (n, seq), e in eff.items():
        t1 = float(np.median(rows[(1, seq)].samples["latency_ms"]))
        tn = float(np.median(np.max([rows[(n, seq)].samples[f"latency_ms@rank{i}"] for i in range(n)], axis=0)))
        assert e.metrics["scaling_efficiency"] == pytest.approx(t1 / (n * tn))
        assert e.metrics["speedup"] == pytest.approx(t1 / tn)
        assert e.metrics["ideal_latency_ms"] == pytest.approx(t1 / n)
        assert e.metrics["base_ranks"] == 1.0 and e.metrics["latency_ms"] == pytest.approx(tn)
    assert len({e.case_id for e in eff.values()}) == len(eff)


def test_report_tables_and_charts(launched):
    out, records = launched
    md = (out / "report.md").read_text()
    assert "### context_parallel: per processes and length" in md and "### context_parallel: scaling efficiency" in md
    df = frame(records)
    for draw in (cp_latency_vs_ranks, cp_efficiency, cp_comm_share):
        assert draw(Figure().add_subplot(), df, records)


# ---- one process, in this process ---------------------------------------------------------------------
@pytest.fixture
def one_rank():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield DistInfo(rank=0, world_size=1, local_rank=0, backend="gloo", host="h")
    dist.destroy_process_group()


def _ctx(params, dist_info):
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, timing=TimingConfig(), env={},
                     case=Case("c", "andromeda:tiny", "context_parallel", params))
    ctx.extra["dist"] = dist_info
    return ctx


def _params(**kw):
    return validate({"models": ["andromeda:tiny"], "device": "cpu", "launcher": {"nproc": 2},
                     "scenarios": [{**ENTRY, "ranks": [1], **kw}]}).scenarios[0].points()[0]


def test_one_rank_out_of_memory_keeps_the_shorter_rows(one_rank, monkeypatch):
    p = _params(seq_lens=[32, 64, 128], iters=1, check_len=None)
    real = cp.measure

    def measure(bundle, tokens, p, ctx, world):
        if tokens.shape[1] >= 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(bundle, tokens, p, ctx, world)

    monkeypatch.setattr(cp, "measure", measure)
    recs = cp.ContextParallel().run(build("andromeda:tiny", torch.device("cpu"), torch.float32), p, _ctx(p, one_rank))
    assert [(r.params["seq_len"], r.status) for r in recs] == [(32, "ok"), (64, "oom"), (128, "skipped")]
    assert "out of memory" in recs[1].message and recs[2].message == "not run: seq_len 64 ran out of memory"
    assert "logits_max_abs_diff" not in recs[0].metrics and recs[0].info["check"] == "no check (check_len: null)"


def test_the_entry_model_and_dtype_replace_the_run_model(one_rank):
    p = _params(model="andromeda:tiny?depth=1", dtype="bfloat16", seq_lens=[32], iters=1, check_len=32)
    (rec,) = cp.ContextParallel().run(build("andromeda:tiny", torch.device("cpu"), torch.float32), p,
                                      _ctx(p, one_rank))
    assert rec.status == "ok" and rec.params["model"] == "andromeda:tiny?depth=1" and rec.params["dtype"] == "bfloat16"
    assert rec.info["check_rtol"] == 5e-2 and rec.metrics["matches_single"] == 1.0
    assert rec.metrics["tflops"] == pytest.approx(forward_flops(facts_from_config(from_name("tiny", depth=1)), 1, 32,
                                                                lm_head="last").total / rec.metrics["latency_ms"] / 1e9)


def test_skip_reasons(one_rank):
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    assert "exceed the model's max_seq_len 256" in cp.unsupported(bundle, [128, 512], 1)
    assert "do not split into 2 x 4 chunks" in cp.unsupported(bundle, [6], 4)
    assert cp.unsupported(bundle, [8, 256], 4) is None
    bundle.model = torch.nn.Linear(2, 2)
    assert "runs Andromeda models" in cp.unsupported(bundle, [8], 1)
    p = _params(seq_lens=[512])
    (rec,) = cp.ContextParallel().run(build("andromeda:tiny", torch.device("cpu"), torch.float32), p,
                                      _ctx(p, one_rank))
    assert rec.status == "skipped" and "max_seq_len" in rec.message


# ---- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "error"), [
    ({"seq_lens": []}, "scenarios[0].seq_lens:"),
    ({"seq_lens": [64, 64]}, "scenarios[0].seq_lens: each length once, got [64, 64]"),
    ({"seq_lens": [64, 2**21]}, "scenarios[0].seq_lens[1]:"),
    ({"ranks": [1, 0]}, "scenarios[0].ranks[1]: must be a positive integer or 'all', got 0"),
    ({"ranks": [1, 8], "seq_lens": [64, 8]}, "scenarios[0].seq_lens[1]: 8 tokens do not split into 2 chunks per rank "
                                            "over 8 ranks; at least 16"),
    ({"ranks": [4], "check_len": 4}, "scenarios[0].check_len: 4 tokens do not split"),
    ({"model": "hf:llama"}, "scenarios[0].model: 'hf:llama': context-parallel prefill runs Andromeda models"),
    ({"model": "tiny"}, "scenarios[0].model: 'tiny' is not a model source"),
    ({"dtype": "int8"}, "scenarios[0].dtype:"),
    ({"check_rtol": 0.0}, "scenarios[0].check_rtol:"),
    ({"iters": 0}, "scenarios[0].iters:"),
    ({"comm_runs": 101}, "scenarios[0].comm_runs:"),
    ({"seq_len": 64}, "scenarios[0].seq_len: unknown field"),
])
def test_bad_entries_name_the_field(entry, error):
    with pytest.raises(ConfigError) as e:
        validate({"models": ["andromeda:tiny"], "device": "cpu", "launcher": {"nproc": 2},
                  "scenarios": [{"scenario": "context_parallel", **entry}]})
    msg = str(e.value)
    assert error in msg and "\n" not in msg, msg


def test_launcher_and_model_resources_are_checked():
    with pytest.raises(ConfigError, match=r"scenarios\[0\]: context_parallel runs across processes"):
        validate({"models": ["andromeda:tiny"], "device": "cpu", "scenarios": [{"scenario": "context_parallel"}]})
    m = validate({"models": ["andromeda:tiny"], "device": "cpu", "launcher": {"nproc": 2},
                  "scenarios": [{"scenario": "context_parallel", "model": "andromeda:nosuch"}]})
    with pytest.raises(ConfigError, match=r"scenarios\[0\]\.model: model preset 'nosuch' is unknown"):
        check_resources(m)


# ---- charts -----------------------------------------------------------------------------------------
def _rec(n: int, seq: int, ms: float, efficiency: dict | None = None) -> Record:
    p = {"ranks": n, "seq_len": seq, "model": "andromeda:andromeda", "dtype": "bfloat16", "batch": 1}
    if efficiency is not None:
        return Record(case_id=f"e{n}{seq}", scenario="context_parallel", source="andromeda:base",
                      params={**p, "efficiency": True}, metrics={"latency_ms": ms, **efficiency})
    return Record(case_id=f"c{n}{seq}", scenario="context_parallel", source="andromeda:base", params=p,
                  metrics={"latency_ms": ms, "latency_ms_ci_low": 0.95 * ms, "latency_ms_ci_high": 1.05 * ms,
                           "comm_share": 0.0 if n == 1 else 0.05 * n})


def test_latency_chart_has_the_ideal_and_the_100_ms_lines():
    t = {1: 600.0, 2: 320.0, 4: 170.0, 8: 95.0}  # a 32K prefill of the 2.5B model, as one might measure it
    recs = [_rec(n, 32768, ms) for n, ms in t.items()] + [_rec(n, 8192, ms / 5) for n, ms in t.items()]
    recs += [_rec(n, 32768, ms, {"scaling_efficiency": t[1] / (n * ms)}) for n, ms in t.items()]
    recs.append(Record(case_id="x", scenario="context_parallel", source="andromeda:base", params={"ranks": 16},
                       status="oom"))
    ax = Figure().add_subplot()
    assert cp_latency_vs_ranks(ax, frame(recs), recs)
    lines = {line.get_label(): line for line in ax.get_lines()}
    ideal = lines["32,768 tokens · ideal T(1)·1/N"]
    assert list(ideal.get_xdata()) == [1, 2, 4, 8] and list(ideal.get_ydata()) == pytest.approx([600, 300, 150, 75])
    spec = lines["100 ms (spec: 32,000+ tokens in < 100 ms)"]
    assert list(spec.get_ydata()) == [SPEC_MS, SPEC_MS] and ax.get_yscale() == "log"
    ax = Figure().add_subplot()
    assert cp_efficiency(ax, frame(recs), recs)
    (curve,) = [ln for ln in ax.get_lines() if ln.get_label() == "32,768 tokens"]
    assert list(curve.get_ydata()) == pytest.approx([1.0, 600 / 640, 600 / 680, 600 / 760])
    ax = Figure().add_subplot()
    assert cp_comm_share(ax, frame(recs), recs)
    assert not cp_latency_vs_ranks(Figure().add_subplot(), frame(recs[-1:]), recs[-1:])
