"""The torchrun launcher: a manifest's `launcher:` (launcher.py) runs every case across processes.

The runner hands the planned cases here instead of running them in its own process. Each case is
one run of PyTorch's own launcher, `python -m torch.distributed.run` (torchrun), with as many
processes as the case needs: its `ranks` parameter (the distributed scenarios sweep it; "all" or
absent = nproc x nodes). The workers (runs/worker.py) run the case on every rank and rank 0
writes the merged records to <out>/launch/<case id>/result.json; this process appends them to
results.jsonl and flushes before the next case, as the runner does. A case whose workers fail
becomes one record: `oom` if any rank ran out of memory, `skipped` if the ranks found the case
unsupported, else `error` with the failing rank's message (or torchrun's exit code and the tail of
its log, kept in <out>/launch/<case id>/torchrun.log). --resume skips finished case ids.

One node: `torchrun --standalone` (a free local port). Several nodes: run the same command on
every node; torchrun meets at rdzv_endpoint (c10d rendezvous, id = the case id) and the node that
holds global rank 0 writes the records.

On CPU each rank runs with `cpu_threads` threads (OMP_NUM_THREADS; default 1, torchrun's own default
for several processes): one core per rank is the CPU's analog of one GPU per rank, and keeps a
one-rank case from using the cores that two ranks would share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from andromeda.errors import ConfigError
from andromeda.runs.cases import dominated, finalize, pending_cases
from andromeda.runs.launcher import LauncherSpec, device_problem
from andromeda.runs.worker import JOB_FILE, RESULT_FILE

LAUNCH_DIR = "launch"
LOG_FILE = "torchrun.log"
_LOG_TAIL = 3  # lines of torchrun's log quoted in an error record when no rank reported one


# ---- per case --------------------------------------------------------------------------------
def procs_per_node(spec: LauncherSpec, device_type: str) -> int:
    import torch

    if spec.nproc != "auto":
        return int(spec.nproc)
    if device_type != "cuda":
        raise ConfigError("launcher.nproc: 'auto' counts GPUs and this run is on cpu; give a number")
    return torch.cuda.device_count()


def case_procs(case, spec: LauncherSpec, per_node: int, gpus: int | None) -> tuple[int, str | None]:
    """(processes per node for this case, None) or (0, why the case cannot run here)."""
    ranks = case.params.get("ranks", "all")
    total = per_node * spec.nodes
    world = total if ranks == "all" else int(ranks)
    if world > total:
        return 0, (f"needs {world} processes; the launcher starts at most {total} "
                   f"(nproc {per_node} x nodes {spec.nodes})")
    if world % spec.nodes:
        return 0, f"{world} processes do not split evenly over {spec.nodes} nodes"
    local = world // spec.nodes
    if gpus is not None and local > gpus:
        return 0, f"needs {local} GPUs per node; this machine has {gpus}"
    return local, None


def backend_for(spec: LauncherSpec, device_type: str) -> str:
    if spec.backend != "auto":
        return spec.backend
    return "nccl" if device_type == "cuda" else "gloo"


def torchrun_command(nproc: int, *, nodes: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str = "andromeda",
                     target: list[str]) -> list[str]:
    """`python -m torch.distributed.run ...` for `target` (["-m", "module", args...] or [script, args...])."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(nproc),
           "--max-restarts", "0"]
    if nodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(rdzv_endpoint), "--rdzv-id", rdzv_id]
    return cmd + list(target)


def run_torchrun(cmd: list[str], log: Path, *, timeout_s: float, env: dict[str, str] | None = None) -> int | None:
    """Run torchrun with its output in `log`; its exit code, or None when it ran past timeout_s.

    torchrun and its workers get their own process group, which is stopped on timeout or Ctrl-C.
    """
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return None
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_env(device_type: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if device_type == "cpu":
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch_case(case, ctx, spec: LauncherSpec, nproc: int, job_dir: Path, *, backend: str, seed: int,
                dtype: str) -> list[Any]:
    """Run one case through torchrun; its merged records (as Records), or one failure record."""
    from andromeda.records import Record

    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*job_dir.glob("error-rank*.json"), job_dir / RESULT_FILE):
        stale.unlink(missing_ok=True)
    job = {"case": asdict(case), "device_type": ctx.device.type, "dtype": dtype, "backend": backend,
           "timing": asdict(ctx.timing), "env": ctx.env, "peak_tflops": ctx.peak_tflops, "seed": seed,
           "timeout_s": spec.timeout_s}
    (job_dir / JOB_FILE).write_text(json.dumps(job, default=str))
    cmd = torchrun_command(nproc, nodes=spec.nodes, rdzv_endpoint=spec.rdzv_endpoint, rdzv_id=case.case_id,
                           target=["-m", "andromeda.runs.worker", str(job_dir)])
    code = run_torchrun(cmd, job_dir / LOG_FILE, timeout_s=spec.timeout_s,
                        env=_worker_env(ctx.device.type, spec.cpu_threads))
    result = job_dir / RESULT_FILE
    if result.is_file() and not any(job_dir.glob("error-rank*.json")):
        records = [Record.from_dict(d) for d in json.loads(result.read_text())]
        if code != 0:  # every rank finished and rank 0 wrote the records; a process failed after that
            for r in records:
                r.info["torchrun_exit_code"] = code
        return records
    if code == 0 and spec.nodes > 1:
        return []  # global rank 0 ran on another node: that node writes this case's records
    return [_failure_record(case, ctx, job_dir, code, spec.timeout_s)]


def _failure_record(case, ctx, job_dir: Path, code: int | None, timeout_s: float):
    errors = []
    for p in sorted(job_dir.glob("error-rank*.json")):
        try:
            errors.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    errors.sort(key=lambda e: e.get("rank", 0))
    if errors:
        oom = [e for e in errors if e["status"] == "oom"]
        first = oom[0] if oom else errors[0]
        ranks = ", ".join(str(e["rank"]) for e in errors if e["message"] == first["message"])
        return ctx.record(status=first["status"], message=f"rank {ranks}: {first['message']}")
    if code is None:
        return ctx.record(status="error", message=f"torchrun ran past the launcher's timeout_s ({timeout_s:g} s) "
                                                  f"and was stopped; log: {job_dir / LOG_FILE}")
    tail = _log_tail(job_dir / LOG_FILE)
    return ctx.record(status="error", message=f"torchrun exited with code {code} and no rank reported an error"
                                              f"{': ' + tail if tail else ''} (log: {job_dir / LOG_FILE})")


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-_LOG_TAIL:])[:500]


# ---- the run -----------------------------------------------------------------------------------
def run_launched(manifest, cases: list, done: set[str], ctx, out: Path, store, progress,
                 emit: Callable[[list], None]) -> None:
    """The runner's loop for a manifest with a launcher: one torchrun per pending case."""
    import torch

    spec: LauncherSpec = manifest.launcher
    try:
        device_problem(str(ctx.device) if ctx.device.index is not None else ctx.device.type)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    per_node = procs_per_node(spec, ctx.device.type)
    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else None
    backend = backend_for(spec, ctx.device.type)
    index = 0
    for source in manifest.models:
        todo = [c for c in cases if c.source == source]
        groups = {c.group for c in todo if c.case_id not in done}
        oom_cases: list = []
        for case in pending_cases(todo, done, ctx, progress, index):
            emit(_one(case, ctx, spec, per_node, gpus, backend, manifest, out, oom_cases))
            progress.advance()
        index += len(todo)
        finalize(None, todo, groups, ctx, store, emit)


def _one(case, ctx, spec, per_node, gpus, backend, manifest, out, oom_cases) -> list:
    big = dominated(_sized(case), [_sized(c) for c in oom_cases])
    if big is not None:
        return ctx.skip(f"not run: a smaller point of this sweep ({big.params}) ran out of memory")
    nproc, reason = case_procs(case, spec, per_node, gpus)
    if reason is not None:
        return ctx.skip(reason)
    records = launch_case(case, ctx, spec, nproc, out / LAUNCH_DIR / case.case_id, backend=backend,
                          seed=manifest.seed, dtype=manifest.dtype)
    if any(r.status == "oom" for r in records):
        oom_cases.append(case)
    return records


def _sized(case):
    """The case as OOM dominance sees it: more ranks is not a larger size (it is less memory per rank
    under strong scaling), so the process count must match, like any non-numeric parameter."""
    from dataclasses import replace

    if "ranks" not in case.params:
        return case
    return replace(case, params={**case.params, "ranks": str(case.params["ranks"])})


__all__ = ["torchrun_command", "run_torchrun", "launch_case", "run_launched",
           "case_procs", "procs_per_node", "backend_for"]
