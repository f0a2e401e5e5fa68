"""The worker side of the torchrun launcher.

`python -m torch.distributed.run ... -m andromeda.runs.worker JOB_DIR` starts one worker per
rank (runs/launch.py writes JOB_DIR/job.json and runs that command). Each worker joins the
process group (nccl on CUDA, gloo on CPU, unless the launcher names one), builds the model source
on its device (cuda:LOCAL_RANK, or the CPU) from the same seed, runs the case's scenario, and
sends its records to rank 0 with gather_object. Rank 0 merges them (merge_records, then the
scenario's own merge() if it has one) into one set of records per case, whose samples hold every
rank's samples under "<name>@rank<r>" and whose info["ranks"] holds each rank's host, device,
status and metrics, and writes them to JOB_DIR/result.json. The launcher appends those to
results.jsonl.

A rank that fails writes JOB_DIR/error-rank<r>.json (status and message, classified as the runner
does: oom, skipped, error) and exits at once with code 1, so that torchrun stops the other ranks
rather than leaving them waiting in a collective.

Scenarios find their rank in ctx.extra["dist"], a DistInfo (scenarios/multiprocess.py).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from andromeda.records import Record
from andromeda.runs.cases import classify
from andromeda.scenarios.multiprocess import DistInfo

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error-rank{rank}.json"
_SEVERITY = {"ok": 0, "skipped": 1, "oom": 2, "error": 3}


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None elsewhere (torch.distributed.gather_object)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def merge_records(per_rank: list[list[Record]], ctx, ranks_info: list[dict[str, Any]]) -> list[Record]:
    """One record per record position: rank 0's metrics, every rank's samples (as name@rank<r>),
    the worst status of the ranks, and info["ranks"] with each rank's host, device, status, metrics."""
    lengths = [len(recs) for recs in per_rank]
    if len(set(lengths)) != 1:
        return [ctx.record(status="error", message=f"the ranks returned different numbers of records: {lengths}",
                           info={"world_size": len(per_rank)})]
    out = []
    for recs in zip(*per_rank, strict=True):
        base = recs[0]
        samples = dict(base.samples)
        for r, rec in enumerate(recs):
            samples.update({f"{k}@rank{r}": v for k, v in rec.samples.items()})
        worst = max(range(len(recs)), key=lambda r: _SEVERITY[recs[r].status])
        status = recs[worst].status
        message = base.message if status == base.status else f"rank {worst}: {recs[worst].message}"
        ranks = [{**ranks_info[r], "status": rec.status, "metrics": rec.metrics} for r, rec in enumerate(recs)]
        info = {**base.info, "world_size": len(recs), "ranks": ranks}
        out.append(replace(base, samples=samples, status=status, message=message, info=info))
    return out


# ---- the worker -----------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _device(job: dict[str, Any], local_rank: int):
    import torch

    if job["device_type"] == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        return dev
    return torch.device(job["device_type"])


def run_worker(job_dir: Path) -> None:
    import torch
    import torch.distributed as dist

    from andromeda import scenarios
    from andromeda.measure.timing import TimingConfig
    from andromeda.runs.context import Case, RunContext
    from andromeda.sources import models

    job = json.loads((job_dir / JOB_FILE).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(job, local_rank)
    dist.init_process_group(job["backend"], timeout=timedelta(seconds=job["timeout_s"]))
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=job["backend"],
                    host=socket.gethostname())
    case = Case(**job["case"])
    ctx = RunContext(device=dev, dtype=getattr(torch, job["dtype"]), timing=TimingConfig(**job["timing"]),
                     env=job["env"], peak_tflops=job["peak_tflops"], seed=job["seed"], case=case)
    ctx.extra["dist"] = info
    torch.manual_seed(job["seed"])
    bundle = models.build(case.source, dev, ctx.dtype)
    scenario = scenarios.get(case.scenario)
    records = scenario.run(bundle, dict(case.params), ctx)
    rank_info = {"rank": rank, "local_rank": local_rank, "host": info.host, "device": str(dev)}
    if dev.type == "cuda":
        rank_info["device_name"] = torch.cuda.get_device_name(dev)
    gathered = gather_to_rank0({"info": rank_info, "records": [asdict(r) for r in records]})
    if rank == 0:
        per_rank = [[Record.from_dict(d) for d in g["records"]] for g in gathered]
        merged = merge_records(per_rank, ctx, [g["info"] for g in gathered])
        if hasattr(scenario, "merge") and all(r.status == "ok" for r in merged):
            merged = scenario.merge(merged, per_rank, ctx)
        _write_json(job_dir / RESULT_FILE, [asdict(r) for r in merged])
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = Path(argv[0])
    try:
        run_worker(job_dir)
        sys.stdout.flush()
        sys.stderr.flush()
        # skip interpreter teardown: a process-group thread destroyed there can abort the process
        # ("terminate called without an active exception") after the work is done and written
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the launcher, then we exit
        status, message = classify(e) if isinstance(e, Exception) else ("error", type(e).__name__)
        rank = int(os.environ.get("RANK", "0"))
        try:
            _write_json(job_dir / ERROR_FILE.format(rank=rank),
                        {"rank": rank, "status": status, "message": message, "traceback": traceback.format_exc()})
        finally:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)  # no atexit, no waiting in a collective the other ranks will never enter


if __name__ == "__main__":
    main()
