"""Runner: runs planned cases, isolates failures, appends records, and resumes.

Every case's records are appended to results.jsonl and flushed before the next case starts, so
a crash or Ctrl-C loses at most the case in flight; --resume skips every case id already there.
An OOM becomes an `oom` record (memory is freed and the sweep goes on; larger points of the same
sweep are skipped), an unsupported combination a `skipped` record, any other exception an
`error` record with its message.

The run's exit code (RunResult.exit_code) is 3 when any case of the run errored (this invocation's or,
with --resume, an earlier one's), else 0: oom and skipped are results, not errors.
"""

from __future__ import annotations

import gc
import json
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from andromeda.bench import scenarios, sources
from andromeda.bench.context import Case, RunContext
from andromeda.bench.env import collect_env
from andromeda.bench.flops import device_peak_tflops
from andromeda.bench.manifest import Manifest
from andromeda.bench.plan import plan
from andromeda.bench.records import Record, RecordStore
from andromeda.devices import resolve_device
from andromeda.errors import AndromedaError, ConfigError, UnsupportedError

RESULTS = "results.jsonl"
FACTS = "facts.json"  # each built source's ModelFacts, so comparisons can check shapes without torch
EXIT_ERRORS = 3  # some case errored


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")
    )


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class RunResult:
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # statuses of the records written now
    skipped_existing: int = 0
    total: int = 0
    earlier: dict[str, int] = field(default_factory=dict)  # with --resume: statuses of the records already there

    @property
    def errors(self) -> int:
        return self.counts.get("error", 0) + self.earlier.get("error", 0)

    @property
    def exit_code(self) -> int:
        """3 when a case errored, else 0 (oom and skipped are results)."""
        return EXIT_ERRORS if self.errors else 0


class Progress:
    """The runner's view of progress; the CLI plugs a rich progress bar in."""

    def start(self, total: int) -> None: ...
    def case(self, case: Case, index: int) -> None: ...
    def note(self, text: str) -> None: ...
    def advance(self) -> None: ...
    def stop(self) -> None: ...


def pending_cases(todo: list[Case], done: set[str], ctx: RunContext, progress: Progress, index: int):
    """The cases of `todo` still to run, each announced to progress (numbered from index + 1) and set
    as ctx.case; finished ones (--resume) only advance the progress bar. The caller advances it after
    running a case."""
    for i, case in enumerate(todo, index + 1):
        if case.case_id in done:
            progress.advance()
            continue
        progress.case(case, i)
        ctx.case = case
        yield case


def _dominated(case: Case, oom_cases: list[Case]) -> Case | None:
    """An OOM'd case of the same sweep that this one is at least as large as, in every size."""
    for o in oom_cases:
        if o.group != case.group:
            continue
        same, bigger = True, True
        for k, v in case.params.items():
            ov = o.params.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                same &= v == ov
            elif isinstance(ov, (int, float)):
                bigger &= v >= ov
        if same and bigger:
            return o
    return None


def run(manifest: Manifest, out_dir: str | Path, *, resume: bool = False, device: str | None = None,
        progress: Progress | None = None,
        on_record: Callable[[Record], None] | None = None) -> RunResult:
    out = Path(out_dir)
    check_out_dir(out)
    store = RecordStore(out / RESULTS)
    if store.path.exists() and not resume:
        raise ConfigError(
            f"--out: {store.path} already exists; pass --resume to finish that run, or choose another --out"
        )
    manifest = manifest.model_copy(update={"device": device}) if device else manifest
    dev = resolve_device(manifest.device)  # a bad --device fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    # by_alias: fields are written as users write them (the attention scenario's `pass`, not `pass_`)
    (out / "manifest.yml").write_text(yaml.safe_dump(manifest.model_dump(mode="json", by_alias=True),
                                                     sort_keys=False))

    dtype = getattr(torch, manifest.dtype)
    env = collect_env()
    env["run_device"] = str(dev)
    peak = device_peak_tflops((env.get("gpu_names") or ["cpu"])[0] if dev.type == "cuda" else "cpu",
                              manifest.dtype, manifest.peak_tflops)
    ctx = RunContext(device=dev, dtype=dtype, timing=manifest.timing.to_config(), env=env,
                     peak_tflops=peak, seed=manifest.seed)
    cases = plan(manifest)
    existing = store.read() if resume else []
    done = {r.case_id for r in existing}
    result = RunResult(out, total=len(cases), skipped_existing=sum(c.case_id in done for c in cases))
    planned = {c.case_id for c in cases}
    for r in existing:
        if r.case_id in planned:
            result.earlier[r.status] = result.earlier.get(r.status, 0) + 1
    progress = progress or Progress()
    progress.start(len(cases))

    def emit(records: list[Record]) -> None:
        store.append(records)
        for r in records:
            result.counts[r.status] = result.counts.get(r.status, 0) + 1
            if on_record:
                on_record(r)

    if manifest.launcher is not None:  # every case through torchrun, across processes (bench/launch.py)
        from andromeda.bench.launch import run_launched

        try:
            run_launched(manifest, cases, done, ctx, out, store, progress, emit)
        finally:
            progress.stop()
        return result

    try:
        index = 0
        for source in manifest.models:
            todo = [c for c in cases if c.source == source]
            pending = [c for c in todo if c.case_id not in done]
            groups_to_finalize = {c.group for c in pending}
            bundle = None
            if pending:
                progress.note(f"building {source}")
                try:
                    torch.manual_seed(manifest.seed)
                    bundle = sources.build(source, dev, dtype)
                except Exception as e:  # noqa: BLE001 - a model that cannot be built fails its cases
                    status, msg = _classify(e)
                    for c in pending:
                        ctx.case = c
                        emit([ctx.record(status=status, message=f"building the model failed: {msg}")])
                        progress.advance()
                    index += len(todo)
                    continue
                save_facts(out, source, bundle.facts)
            oom_cases: list[Case] = []
            for case in pending_cases(todo, done, ctx, progress, index):
                emit(_run_case(bundle, case, ctx, oom_cases))
                progress.advance()
            index += len(todo)
            _finalize(bundle, todo, groups_to_finalize, ctx, store, emit)
            del bundle
            free_memory(dev)
    finally:
        progress.stop()
    return result


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


def _classify(e: BaseException) -> tuple[str, str]:
    if is_oom(e):
        return "oom", str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, UnsupportedError):
        return "skipped", str(e)
    if isinstance(e, AndromedaError):
        return "error", str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}"


def _run_case(bundle, case: Case, ctx: RunContext, oom_cases: list[Case]) -> list[Record]:
    big = _dominated(case, oom_cases)
    if big is not None:
        return ctx.skip(f"not run: a smaller point of this sweep ({big.params}) ran out of memory")
    scenario = scenarios.get(case.scenario)
    try:
        return scenario.run(bundle, dict(case.params), ctx)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - isolation is the point
        status, msg = _classify(e)
        if status == "oom":
            oom_cases.append(case)
        return [ctx.record(status=status, message=msg)]
    finally:
        if bundle is not None:
            for p in bundle.model.parameters():
                p.grad = None
        free_memory(ctx.device)


def _finalize(bundle, todo: list[Case], groups: set[str], ctx: RunContext, store: RecordStore, emit) -> None:
    """Sweep-level records (fits, bisection) for groups that ran cases in this invocation."""
    if not groups:
        return
    by_case = {}
    for r in store:
        by_case.setdefault(r.case_id, []).append(r)
    for group in sorted(groups):
        members = [c for c in todo if c.group == group]
        scenario = scenarios.get(members[0].scenario)
        if not hasattr(scenario, "finalize"):
            continue
        records = [r for c in members for r in by_case.get(c.case_id, [])]
        ctx.case = members[-1]
        try:
            emit(scenario.finalize(bundle, records, ctx))
        except Exception as e:  # noqa: BLE001
            status, msg = _classify(e)
            emit([ctx.record(status=status, message=f"finalize: {msg}", params={"fit": True})])
