"""Running cases, what the in-process runner (runner.py) and the torchrun launcher and its workers (launch.py,
worker.py) share: a failure classified as a result (classify), the cases still to run under --resume
(pending_cases), a case a smaller OOM'd point of its sweep rules out (dominated), and the sweep-level records
written after a sweep's cases (finalize)."""

from __future__ import annotations

import traceback
from pathlib import Path

from andromeda import scenarios
from andromeda.errors import AndromedaError, UnsupportedError
from andromeda.measure.memory import is_oom
from andromeda.records import RecordStore
from andromeda.runs.context import Case, RunContext
from andromeda.runs.progress import Progress


def classify(e: BaseException) -> tuple[str, str]:
    """(status, message) of a case that raised: oom, skipped (unsupported), or error with where it was raised."""
    if is_oom(e):
        return "oom", str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, UnsupportedError):
        return "skipped", str(e)
    if isinstance(e, AndromedaError):
        return "error", str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}"


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


def dominated(case: Case, oom_cases: list[Case]) -> Case | None:
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


def finalize(bundle, todo: list[Case], groups: set[str], ctx: RunContext, store: RecordStore, emit) -> None:
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
            status, msg = classify(e)
            emit([ctx.record(status=status, message=f"finalize: {msg}", params={"fit": True})])
