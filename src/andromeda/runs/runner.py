"""Runner: runs planned cases, isolates failures, appends records, and resumes.

Every case's records are appended to results.jsonl and flushed before the next case starts, so
a crash or Ctrl-C loses at most the case in flight; --resume skips every case id already there.
An OOM becomes an `oom` record (memory is freed and the sweep goes on; larger points of the same
sweep are skipped), an unsupported combination a `skipped` record, any other exception an
`error` record with its message.

The run's exit code (RunResult.exit_code) is 3 when any case of the run errored (this invocation's or,
with --resume, an earlier one's), else 0: oom and skipped are results, not errors.

Noise: torch runs with the manifest's `threads` (default the physical cores) for the whole run, set
before any model is built and restored afterwards; the environment record holds it with the load
average (a warning when it exceeds the CPUs). Each case's records carry info["load"], the CPU other
processes took while it ran (measure/host_load.py), and info["noisy"] with the reason when that competed with
the run: comparisons of such cases are inconclusive, never regressions. The plan interleaves the sides
of a comparison case by case (runs/plan.py), so models are built on their first case and freed after
their last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from andromeda import scenarios
from andromeda.devices import resolve_device
from andromeda.errors import ConfigError
from andromeda.measure.env import collect_env, resolve_threads
from andromeda.measure.flops import device_peak_tflops
from andromeda.measure.host_load import LoadProbe, noisy_reason
from andromeda.measure.memory import free_memory
from andromeda.records import RESULTS, Record, RecordStore
from andromeda.runs.cases import classify, dominated, finalize
from andromeda.runs.context import Case, RunContext
from andromeda.runs.manifest import Manifest, dump_manifest
from andromeda.runs.plan import plan
from andromeda.runs.progress import Progress
from andromeda.runs.run_log import LOG_NAME, library_output_to, logged_lines
from andromeda.sources import models

FACTS = "facts.json"  # each built source's ModelFacts, so comparisons can check shapes without torch
EXIT_ERRORS = 3  # some case errored


@dataclass
class RunResult:
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # statuses of the records written now
    skipped_existing: int = 0
    total: int = 0
    earlier: dict[str, int] = field(default_factory=dict)  # with --resume: statuses of the records already there
    noisy: int = 0  # cases of this invocation measured while other processes competed for the CPU
    cases_run: int = 0  # cases run by this invocation (a case writes one record or many)
    case_counts: dict[str, int] = field(default_factory=dict)  # this invocation's cases by status (CASE_ORDER)
    log_path: Path | None = None  # where library warnings went (capture_output=True)
    log_lines: int = 0  # lines the libraries wrote there during this invocation

    @property
    def errors(self) -> int:
        return self.counts.get("error", 0) + self.earlier.get("error", 0)

    @property
    def exit_code(self) -> int:
        """3 when a case errored, else 0 (oom and skipped are results)."""
        return EXIT_ERRORS if self.errors else 0


# a case's status: the first of these among its records (a case with one error record is an errored case)
CASE_ORDER = ("error", "oom", "ok", "skipped")


def case_status(statuses: list[str]) -> str:
    return next((s for s in CASE_ORDER if s in statuses), statuses[0] if statuses else "ok")


def check_sized_for(manifest: Manifest, dev: torch.device, force: bool) -> None:
    """ConfigError (one line) when a manifest sized for a GPU would run on a CPU without --force."""
    if manifest.sized_for != "gpu" or dev.type != "cpu" or force:
        return
    instead = (f"run its CPU counterpart, the preset '{manifest.cpu_counterpart}' (--preset "
               f"{manifest.cpu_counterpart}), " if manifest.cpu_counterpart else "run it on a GPU (--device cuda), ")
    raise ConfigError(f"'{manifest.name}' is sized for a GPU (sized_for: gpu) and this run's device is cpu, where it "
                      f"would take hours; {instead}or pass --force to run it here anyway")


def run(manifest: Manifest, out_dir: str | Path, *, resume: bool = False, device: str | None = None,
        progress: Progress | None = None,
        on_record: Callable[[Record], None] | None = None, force: bool = False,
        capture_output: bool = False) -> RunResult:
    """Run every case of `manifest` into `out_dir`. force: run a GPU-sized manifest on a CPU. capture_output:
    library output (warnings, loggers, C++ messages on stderr) goes to <out>/run.log, not the terminal
    (runs/run_log.py); the progress is attached to the terminal."""
    out = Path(out_dir)
    check_out_dir(out)
    store = RecordStore(out / RESULTS)
    if store.path.exists() and not resume:
        raise ConfigError(
            f"--out: {store.path} already exists; pass --resume to finish that run, or choose another --out"
        )
    manifest = manifest.model_copy(update={"device": device}) if device else manifest
    dev = resolve_device(manifest.device)  # a bad --device fails here, before anything is written
    check_sized_for(manifest, dev, force)
    out.mkdir(parents=True, exist_ok=True)
    # by_alias: fields are written as users write them (the attention scenario's `pass`, not `pass_`)
    # dump_manifest quotes strings YAML 1.2 would read as numbers or bools ('1e5', 'yes'): they read back as written
    (out / "manifest.yml").write_text(dump_manifest(manifest))

    dtype = getattr(torch, manifest.dtype)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(manifest.threads))  # before any model is built or case runs
    log_path = out / LOG_NAME
    start = log_path.stat().st_size if log_path.is_file() else 0
    progress = progress or Progress()
    capture = library_output_to(log_path) if capture_output else nullcontext(None)
    try:
        with capture as terminal:
            if terminal is not None:
                progress.attach(terminal)
            result = _run(manifest, out, store, dev, dtype, resume, progress, on_record)
    finally:
        torch.set_num_threads(threads_before)
    if capture_output:
        result.log_path, result.log_lines = log_path, len(logged_lines(log_path, start))
    return result


def _run(manifest: Manifest, out: Path, store: RecordStore, dev: torch.device, dtype: torch.dtype, resume: bool,
         progress: Progress | None, on_record: Callable[[Record], None] | None) -> RunResult:
    env = collect_env()
    env["run_device"] = str(dev)
    env["threads_setting"] = manifest.threads
    peak = device_peak_tflops((env.get("gpu_names") or ["cpu"])[0] if dev.type == "cuda" else "cpu",
                              manifest.dtype, manifest.peak_tflops)
    ctx = RunContext(device=dev, dtype=dtype, timing=manifest.timing.to_config(), env=env,
                     peak_tflops=peak, seed=manifest.seed, progress=progress.note, log=progress.log)
    cases = plan(manifest)
    existing = store.read() if resume else []
    done = {r.case_id for r in existing}
    result = RunResult(out, total=len(cases), skipped_existing=sum(c.case_id in done for c in cases))
    planned = {c.case_id for c in cases}
    for r in existing:
        if r.case_id in planned:
            result.earlier[r.status] = result.earlier.get(r.status, 0) + 1
    if env.get("load_warning"):
        progress.warn(env["load_warning"])
    progress.start(len(cases))

    by_case: dict[str, list[str]] = {}

    def emit(records: list[Record]) -> None:
        store.append(records)
        result.noisy += any(r.info.get("noisy") for r in records)
        for r in records:
            result.counts[r.status] = result.counts.get(r.status, 0) + 1
            if r.case_id in planned:  # a sweep's fit record shares its last case's id
                by_case.setdefault(r.case_id, []).append(r.status)
            if on_record:
                on_record(r)
        result.cases_run = len(by_case)
        result.case_counts = {}
        for statuses in by_case.values():
            st = case_status(statuses)
            result.case_counts[st] = result.case_counts.get(st, 0) + 1

    if manifest.launcher is not None:  # every case through torchrun, across processes (runs/launch.py)
        from andromeda.runs.launch import run_launched

        try:
            run_launched(manifest, cases, done, ctx, out, store, progress, emit)
        finally:
            progress.stop()
        return result

    try:
        _run_in_process(manifest, cases, done, ctx, out, store, progress, emit)
    finally:
        progress.stop()
    if result.noisy:
        progress.warn(f"{result.noisy} case(s) ran while other processes competed for the CPU (info.noisy in "
                      "their records): their timings are noisy, and comparisons of them are inconclusive")
    return result


def _run_in_process(manifest: Manifest, cases: list[Case], done: set[str], ctx: RunContext, out: Path,
                    store: RecordStore, progress: Progress, emit) -> None:
    """The cases in plan order. A source is built before its first pending case and freed (after its sweeps
    are finalized) after its last case: once per source, whether its cases run in a block or interleaved."""
    last = {c.source: i for i, c in enumerate(cases)}
    bundles: dict[str, object] = {}
    failed: dict[str, tuple[str, str]] = {}  # source -> (status, message) of a build that failed
    oom_cases: dict[str, list[Case]] = {}
    for i, case in enumerate(cases):
        source = case.source
        if case.case_id not in done:
            if source not in bundles and source not in failed:
                progress.note(f"building {source}")
                try:
                    torch.manual_seed(manifest.seed)
                    bundles[source] = models.build(source, ctx.device, ctx.dtype)
                    save_facts(out, source, bundles[source].facts)
                except Exception as e:  # noqa: BLE001 - a model that cannot be built fails its cases
                    failed[source] = classify(e)
            progress.case(case, i + 1)
            ctx.case = case
            if source in failed:
                status, msg = failed[source]
                emit([ctx.record(status=status, message=f"building the model failed: {msg}")])
            else:
                emit(_run_case(bundles[source], case, ctx, oom_cases.setdefault(source, [])))
        progress.advance()
        if last[source] == i and source not in failed:
            todo = [c for c in cases if c.source == source]
            finalize(bundles.pop(source, None), todo, {c.group for c in todo if c.case_id not in done}, ctx,
                      store, emit)
            free_memory(ctx.device)


def check_out_dir(out: Path) -> None:
    """ConfigError (one line) unless `out` is, or can be made, a writable directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory; choose another --out")
    parent = out
    while not parent.exists():  # the nearest existing folder is the one mkdir writes into
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out: {out} lies under {parent}, which is a file, not a directory; choose another --out")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: cannot write into {parent} (permission denied); choose another --out")


def save_facts(out: Path, source: str, facts) -> None:
    """Add one source's facts to <out>/facts.json (kept across --resume)."""
    path = out / FACTS
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known[source] = asdict(facts)
    path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _run_case(bundle, case: Case, ctx: RunContext, oom_cases: list[Case]) -> list[Record]:
    big = dominated(case, oom_cases)
    if big is not None:
        return ctx.skip(f"not run: a smaller point of this sweep ({big.params}) ran out of memory")
    scenario = scenarios.get(case.scenario)
    try:
        probe = LoadProbe(torch.get_num_threads())
        return with_load(scenario.run(bundle, dict(case.params), ctx), probe.stop())
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - isolation is the point
        status, msg = classify(e)
        if status == "oom":
            oom_cases.append(case)
        return [ctx.record(status=status, message=msg)]
    finally:
        if bundle is not None:
            for p in bundle.model.parameters():
                p.grad = None
        free_memory(ctx.device)


def with_load(records: list[Record], load: dict) -> list[Record]:
    """The records with the load their case ran under (info["load"]) and, when other processes competed with
    it, info["noisy"]: the reason."""
    reason = noisy_reason(load)
    for r in records:
        r.info["load"] = load
        if reason:
            r.info["noisy"] = reason
    return records
