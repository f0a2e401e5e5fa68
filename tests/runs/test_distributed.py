"""The torchrun launcher and the multi-process scenarios: 2 CPU processes with gloo run the
distributed-quick preset (DDP and FSDP2 at 1 and 2 ranks, collectives, load balance) end to end;
DDP and FSDP2 gradients against a single-process reference; bus bandwidth, load-balance and
scaling-efficiency formulas; launcher validation errors."""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from andromeda.cli import main
from andromeda.errors import ConfigError
from andromeda.measure.balance import algbw_gbps, bus_factor, busbw_gbps, rank_spread, scaling_efficiency, stragglers
from andromeda.measure.timing import TimingConfig
from andromeda.records import RecordStore
from andromeda.runs.context import Case, RunContext
from andromeda.runs.launch import (
    _failure_record,
    case_procs,
    run_torchrun,
    torchrun_command,
)
from andromeda.runs.launcher import LauncherSpec
from andromeda.runs.manifest import validate
from andromeda.scenarios.data_parallel import union_us
from andromeda.sources.models import build

WORKER = Path(__file__).with_name("dist_grads_worker.py")


# ---- formulas ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("op", "n", "busbw"), [
    # nccl-tests PERFORMANCE.md: all-reduce busbw = algbw * 2(n-1)/n, all-gather busbw = algbw * (n-1)/n
    ("all_reduce", 1, 0.0), ("all_reduce", 2, 10.0), ("all_reduce", 4, 15.0), ("all_reduce", 8, 17.5),
    ("all_gather", 1, 0.0), ("all_gather", 2, 5.0), ("all_gather", 4, 7.5), ("all_gather", 8, 8.75),
])
def test_bus_bandwidth_is_the_nccl_tests_definition(op, n, busbw):
    # 1e9 bytes in 0.1 s: algbw 10 GB/s (GB = 1e9 B, as nccl-tests prints)
    assert algbw_gbps(1e9, 0.1) == pytest.approx(10.0)
    assert busbw_gbps(op, 1e9, 0.1, n) == pytest.approx(busbw)
    assert bus_factor(op, n) == pytest.approx(busbw / 10.0)


def test_bus_bandwidth_rejects_nonsense():
    with pytest.raises(ValueError, match="unknown"):
        bus_factor("all_to_all_v", 2)
    with pytest.raises(ValueError):
        algbw_gbps(1e6, 0.0)


def test_rank_spread_and_stragglers():
    medians = [10.0, 10.0, 10.0, 13.0]
    s = rank_spread(medians)
    assert s["max_over_min"] == pytest.approx(1.3)
    assert s["cv"] == pytest.approx(statistics.pstdev(medians) / statistics.mean(medians))
    assert stragglers(medians, 0.1) == [3]  # 13 > 10 * 1.1
    assert stragglers(medians, 0.35) == []  # 13 < 10 * 1.35
    assert stragglers([10.0, 12.0], 0.1) == [1]
    assert stragglers([10.0], 0.1) == []  # one rank has no others to lag behind


def test_scaling_efficiency_against_the_fewest_ranks():
    n0, eff = scaling_efficiency([1, 2, 4], [100.0, 190.0, 340.0])
    assert n0 == 1 and eff == pytest.approx([1.0, 0.95, 0.85])
    n0, eff = scaling_efficiency([2, 4, 8], [200.0, 380.0, 600.0])  # no 1-rank point: relative to 2
    assert n0 == 2 and eff == pytest.approx([1.0, 0.95, 0.75])


def test_union_of_collective_intervals_counts_overlap_once():
    assert union_us([(0, 10), (5, 15), (20, 25), (21, 22)]) == pytest.approx(20.0)
    assert union_us([]) == 0.0


# ---- manifest validation -----------------------------------------------------------------------
def _manifest(launcher=None, scenario=None, device="cpu"):
    m = {"models": ["andromeda:tiny"], "device": device,
         "scenarios": [scenario or {"scenario": "data_parallel", "ranks": [1, 2]}]}
    if launcher is not None:
        m["launcher"] = launcher
    return m


@pytest.mark.parametrize(("launcher", "scenario", "device", "error"), [
    ({"type": "mpirun", "nproc": 2}, None, "cpu", "launcher.type: Input should be 'torchrun'"),
    ({"nproc": 0}, None, "cpu", "launcher.nproc: must be a positive integer (processes per node) or 'auto'"),
    ({"nproc": "two"}, None, "cpu", "launcher.nproc: must be a positive integer"),
    ({"nproc": 2, "nodes": 0}, None, "cpu", "launcher.nodes: Input should be greater than 0"),
    ({"nproc": 2, "nodes": 2}, None, "cpu", "launcher.rdzv_endpoint: required when nodes > 1"),
    ({"nproc": 2, "rdzv_endpoint": "nohost"}, None, "cpu", "launcher.rdzv_endpoint: 'nohost' is not host:port"),
    ({"nproc": 2, "backend": "mpi"}, None, "cpu", "launcher.backend: Input should be 'auto', 'nccl' or 'gloo'"),
    ({"nproc": 2, "procs": 2}, None, "cpu", "launcher.procs: unknown field; allowed: type, nproc, nodes"),
    ({"nproc": 2, "timeout_s": -1}, None, "cpu", "launcher.timeout_s: Input should be greater than 0"),
    ({"nproc": "auto"}, None, "cpu", "launcher.nproc: 'auto' counts GPUs and this manifest runs on cpu"),
    ({"nproc": 2}, None, "cuda:1", "device: 'cuda:1' names one GPU; with a launcher use `device: cuda`"),
    (None, None, "cpu", "scenarios[0]: data_parallel runs across processes; add `launcher: {type: torchrun"),
    ({"nproc": 2}, {"scenario": "data_parallel", "ranks": [1, 0]}, "cpu",
     "scenarios[0].ranks[1]: must be a positive integer or 'all', got 0"),
    ({"nproc": 2}, {"scenario": "collectives", "ranks": "all"}, "cpu", "scenarios[0].ranks: a non-empty list"),
    ({"nproc": 2}, {"scenario": "data_parallel", "strategy": ["zero3"]}, "cpu", "scenarios[0].strategy[0]:"),
    ({"nproc": 2}, {"scenario": "load_balance", "straggler_threshold": -0.1}, "cpu",
     "scenarios[0].straggler_threshold: Input should be greater than or equal to 0"),
    ({"nproc": 2}, {"scenario": "training", "checkpoint_dir": "ck"}, "cpu",
     "scenarios[0].checkpoint_dir: under a launcher every rank would write the same checkpoint"),
])
def test_bad_launcher_and_scenario_fields_name_the_field(launcher, scenario, device, error):
    with pytest.raises(ConfigError) as e:
        validate(_manifest(launcher, scenario, device))
    msg = str(e.value)
    assert error in msg, msg
    assert "\n" not in msg


def test_good_launcher_validates_and_changes_case_ids():
    from andromeda.runs.plan import plan

    m = validate(_manifest({"type": "torchrun", "nproc": 2, "nodes": 1}, {"scenario": "latency"}))
    assert m.launcher == LauncherSpec(nproc=2)
    plain = validate(_manifest(None, {"scenario": "latency"}))
    assert {c.case_id for c in plan(m)}.isdisjoint({c.case_id for c in plan(plain)})
    two = validate(_manifest({"nproc": 2, "nodes": 2, "rdzv_endpoint": "node0:29500"}))
    assert two.launcher.rdzv_endpoint == "node0:29500"


def test_case_processes_follow_ranks_nodes_and_gpus():
    def case(ranks):
        return Case("x", "andromeda:tiny", "data_parallel", {} if ranks is None else {"ranks": ranks})

    spec = LauncherSpec(nproc=4)
    assert case_procs(case(None), spec, 4, None) == (4, None)  # not swept: every process
    assert case_procs(case("all"), spec, 4, None) == (4, None)
    assert case_procs(case(1), spec, 4, None) == (1, None)
    n, why = case_procs(case(8), spec, 4, None)
    assert n == 0 and "needs 8 processes; the launcher starts at most 4" in why
    n, why = case_procs(case(4), spec, 4, 2)
    assert n == 0 and "needs 4 GPUs per node; this machine has 2" in why
    two = LauncherSpec(nproc=4, nodes=2, rdzv_endpoint="h:1")
    assert case_procs(case(8), two, 4, None) == (4, None)
    assert case_procs(case(3), two, 4, None)[0] == 0


def test_torchrun_command_is_pytorch_own_launcher():
    one = torchrun_command(2, target=["-m", "pkg.mod", "job"])
    assert one[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert one[one.index("--nproc-per-node") + 1] == "2" and "--standalone" in one
    assert one[-3:] == ["-m", "pkg.mod", "job"]
    multi = torchrun_command(8, nodes=2, rdzv_endpoint="node0:29500", rdzv_id="abc", target=["s.py"])
    assert "--standalone" not in multi
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29500"
    assert multi[multi.index("--rdzv-id") + 1] == "abc" and multi[multi.index("--nnodes") + 1] == "2"


def test_failures_become_records(tmp_path):
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, timing=TimingConfig(), env={},
                     case=Case("c1", "andromeda:tiny", "data_parallel", {"ranks": 2}))
    code = run_torchrun([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "torchrun.log",
                        timeout_s=30)
    assert code == 3
    rec = _failure_record(ctx.case, ctx, tmp_path, code, 30)
    assert rec.status == "error" and "exited with code 3" in rec.message and "boom" in rec.message
    start = time.perf_counter()
    assert run_torchrun([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "b.log",
                        timeout_s=0.5) is None
    assert time.perf_counter() - start < 15
    assert "timeout_s" in _failure_record(ctx.case, ctx, tmp_path / "none", None, 0.5).message
    for rank, status, msg in ((0, "error", "NCCL error"), (1, "oom", "CUDA out of memory")):
        (tmp_path / f"error-rank{rank}.json").write_text(json.dumps({"rank": rank, "status": status, "message": msg}))
    rec = _failure_record(ctx.case, ctx, tmp_path, 1, 30)
    assert rec.status == "oom" and rec.message == "rank 1: CUDA out of memory"  # one rank's OOM makes the case OOM


# ---- gradients ---------------------------------------------------------------------------------
def test_ddp_and_fsdp_gradients_equal_across_ranks_and_the_single_process_gradient(tmp_path):
    out = tmp_path / "grads.pt"
    cmd = torchrun_command(2, target=[str(WORKER), str(out)])
    code = run_torchrun(cmd, tmp_path / "torchrun.log", timeout_s=120, env=None)
    assert code == 0, (tmp_path / "torchrun.log").read_text()[:6000]
    result = torch.load(out)
    # reference: one process, the same initial weights, the whole batch (both ranks' halves)
    torch.manual_seed(0)
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    bundle.model.train()
    bundle.loss(result["batch"]).backward()
    reference = torch.cat([p.grad.flatten() for p in bundle.model.parameters()])
    for strategy in ("ddp", "fsdp"):
        rank0, rank1 = result[strategy]
        assert torch.equal(rank0, rank1), strategy  # after the step every rank holds the same gradient
        torch.testing.assert_close(rank0, reference, rtol=1e-5, atol=1e-6)


# ---- end to end: the distributed-quick preset ----------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "run"
    code = main(["run", "--preset", "distributed-quick", "--out", str(out), "--set", "report.formats=[csv,png]"])
    return out, code, RecordStore(out / "results.jsonl").read()


def test_preset_runs_every_case_across_two_gloo_processes(quick):
    out, code, records = quick
    assert code == 0
    assert records and all(r.status == "ok" for r in records), [(r.scenario, r.message) for r in records]
    manifest = yaml.safe_load((out / "manifest.yml").read_text())
    assert manifest["launcher"]["nproc"] == 2 and manifest["device"] == "cpu"
    cases = [r for r in records if not r.params.get("efficiency")]
    assert {r.scenario for r in cases} == {"data_parallel", "collectives", "load_balance", "context_parallel"}
    for r in cases:
        n = r.params["ranks"]
        assert r.info["world_size"] == n and [x["rank"] for x in r.info["ranks"]] == list(range(n))
        assert all(x["status"] == "ok" and x["device"] == "cpu" for x in r.info["ranks"])


def test_gathered_data_parallel_records_hold_both_ranks(quick):
    _, _, records = quick
    dp = {(r.params["strategy"], r.params["ranks"]): r for r in records
          if r.scenario == "data_parallel" and not r.params.get("efficiency")}
    assert set(dp) == {("ddp", 1), ("ddp", 2), ("fsdp", 1), ("fsdp", 2)}
    for (_, n), r in dp.items():
        assert r.info["backend"] == "gloo"
        per_rank = [r.samples[f"step_ms@rank{i}"] for i in range(n)]
        assert all(len(s) == r.params["steps"] for s in per_rank)
        assert f"step_ms@rank{n}" not in r.samples
        # a step ends when its slowest rank does; tokens/s counts every rank's tokens
        step = np.max(np.array(per_rank), axis=0)
        assert r.samples["step_ms"] == pytest.approx(step.tolist())
        tokens = r.params["batch"] * r.params["seq_len"] * n  # weak scaling: batch per rank
        assert r.params["global_batch"] == r.params["batch"] * n
        assert r.samples["tokens_per_s"] == pytest.approx((tokens / (step / 1e3)).tolist())
        assert r.metrics["tokens_per_s"] == pytest.approx(float(np.median(tokens / (step / 1e3))))
        assert r.metrics["tokens_per_s_per_rank"] == pytest.approx(r.metrics["tokens_per_s"] / n)
        medians = [float(np.median(s)) for s in per_rank]
        assert r.metrics["step_ms_max_over_min_ranks"] == pytest.approx(max(medians) / min(medians))
        assert r.metrics["step_ms_cv_ranks"] == pytest.approx(statistics.pstdev(medians) / statistics.mean(medians))
        assert r.metrics["stragglers"] == len(r.info["stragglers"])
        assert 0.0 <= r.metrics["comm_share"] <= 1.0
        if n == 2:
            assert r.metrics["comm_share"] > 0  # gradients cross processes: a collective ran in the step


def test_scaling_efficiency_records_recompute_from_the_cases(quick):
    _, _, records = quick
    eff = {r.params["strategy"]: r for r in records if r.scenario == "data_parallel" and r.params.get("efficiency")}
    assert set(eff) == {"ddp", "fsdp"}
    for strategy, e in eff.items():
        t = {r.params["ranks"]: r.metrics["tokens_per_s"] for r in records if r.scenario == "data_parallel"
             and r.params.get("strategy") == strategy and not r.params.get("efficiency")}
        assert e.samples["ranks"] == [1.0, 2.0]
        assert e.samples["scaling_efficiency"] == pytest.approx([1.0, t[2] / (2 * t[1])])
        assert e.samples["ideal_tokens_per_s"] == pytest.approx([t[1], 2 * t[1]])
        assert e.metrics["base_ranks"] == 1.0


def test_collective_bandwidth_records(quick):
    _, _, records = quick
    coll = [r for r in records if r.scenario == "collectives"]
    assert {(r.params["op"], r.params["size_mib"]) for r in coll} == {
        (op, s) for op in ("all_reduce", "all_gather") for s in (0.25, 1.0, 4.0)}
    for r in coll:
        assert r.info["checked"] is True
        t0, t1 = np.array(r.samples["time_us@rank0"]), np.array(r.samples["time_us@rank1"])
        run = np.maximum(t0, t1)
        assert r.samples["time_us"] == pytest.approx(run.tolist())
        t = float(np.median(run)) / 1e6
        factor = 2 * (2 - 1) / 2 if r.params["op"] == "all_reduce" else (2 - 1) / 2
        assert r.metrics["busbw_gbps"] == pytest.approx(r.params["size_bytes"] / t / 1e9 * factor)
        assert r.params["size_bytes"] == pytest.approx(r.params["size_mib"] * 2**20, rel=1e-6)


def test_load_balance_record(quick):
    _, _, records = quick
    (r,) = [r for r in records if r.scenario == "load_balance"]
    medians = [float(np.median(r.samples[f"compute_ms@rank{i}"])) for i in range(2)]
    assert r.metrics["compute_ms_max_over_min_ranks"] == pytest.approx(max(medians) / min(medians))
    assert r.metrics["compute_ms_slowest_rank"] == float(np.argmax(medians))
    assert r.info["stragglers"] == stragglers(medians, r.params["straggler_threshold"])


def test_report_draws_the_scaling_charts(quick):
    out, _, _ = quick
    charts = {p.name for p in (out / "charts").glob("*.png")}
    for name in ("data_parallel_throughput_vs_ranks", "data_parallel_efficiency", "data_parallel_step_ms_per_rank",
                 "data_parallel_comm_share", "collectives_busbw", "load_balance_compute_ms_per_rank"):
        assert f"{name}.png" in charts, charts
    assert (out / "csv" / "data_parallel.csv").exists()


def test_resume_launches_nothing_again(quick):
    out, _, records = quick
    before = {p.name: p.stat().st_mtime for p in (out / "launch").iterdir()}
    assert main(["run", "--preset", "distributed-quick", "--out", str(out), "--resume",
                 "--set", "report.formats=[csv]"]) == 0
    assert len(RecordStore(out / "results.jsonl").read()) == len(records)
    assert {p.name: p.stat().st_mtime for p in (out / "launch").iterdir()} == before


@pytest.mark.cuda
def test_nccl_collectives_on_every_gpu(tmp_path):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip("needs 2 GPUs")
    m = {"name": "nccl", "models": ["andromeda:tiny"], "device": "cuda", "report": {"formats": ["csv"]},
         "launcher": {"type": "torchrun", "nproc": "auto"},
         "scenarios": [{"scenario": "collectives", "sizes_mib": [1, 64], "iters": 5},
                       {"scenario": "data_parallel", "strategy": ["ddp", "fsdp"], "ranks": [1, "all"], "steps": 3}]}
    p = tmp_path / "m.yml"
    p.write_text(yaml.safe_dump(m))
    assert main(["run", str(p), "--out", str(tmp_path / "run")]) == 0
    records = RecordStore(tmp_path / "run" / "results.jsonl").read()
    assert all(r.status == "ok" for r in records), [r.message for r in records]
    for r in records:
        if r.scenario == "collectives":
            assert r.info["backend"] == "nccl" and r.info["world_size"] == gpus and r.metrics["busbw_gbps"] > 0

