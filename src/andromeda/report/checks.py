"""Warnings a reader must see before trusting the numbers.

- noisy: an ok record's `*_cv` metric (coefficient of variation of the raw samples) above NOISY_CV;
- flagged: the scenario flagged the record: `info["warnings"]` (a string or a list of strings) or
  `info["noisy"] = true`;
- missing: a metric stored as null (NaN/Inf are stored as null) or as a non-number;
- fit: a scaling fit record whose r2 is below POOR_FIT_R2;
- env: an environment key whose value differs between records of one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from andromeda.records import Record
from andromeda.report.format import fmt_number
from andromeda.report.load import describe

NOISY_CV = 0.1
POOR_FIT_R2 = 0.9


def make_warning(kind: str, message: str, record: Record | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "scenario": record.scenario if record else None,
        "case_id": record.case_id if record else None,
        "source": record.source if record else None,
        "message": message,
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def find_warnings(records: Sequence[Record], env_differing: Sequence[str] = ()) -> list[dict[str, Any]]:
    out = [
        make_warning(
            "env", f"environment key {k!r} differs between records; the report shows the first value"
        )
        for k in env_differing
    ]
    for r in records:
        where = f"{r.scenario}: {describe(r)}"
        for name, v in r.metrics.items():
            if not _is_number(v):
                out.append(make_warning("missing", f"{where}: metric {name} has no numeric value ({v!r})", r))
            elif r.status == "ok" and name.endswith("_cv") and v > NOISY_CV:
                out.append(
                    make_warning(
                        "noisy", f"{where}: {name} = {fmt_number(v)} > {NOISY_CV} (noisy measurement)", r
                    )
                )
        r2 = r.metrics.get("r2")
        if r.params.get("fit") is True and _is_number(r2) and r2 < POOR_FIT_R2:
            out.append(
                make_warning("fit", f"{where}: fit r2 = {fmt_number(r2)} < {POOR_FIT_R2} (poor fit)", r)
            )
        flags = r.info.get("warnings")
        if isinstance(flags, str):
            flags = [flags]
        for flag in flags or []:
            out.append(make_warning("flagged", f"{where}: {flag}", r))
        if r.info.get("noisy") is True and not any(
            w["kind"] == "noisy" and w["case_id"] == r.case_id for w in out
        ):
            out.append(make_warning("flagged", f"{where}: marked noisy by the scenario", r))
    return out


def problems(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Records that did not produce a measurement (oom, error, skipped), with their messages."""
    return [
        {
            "status": r.status,
            "scenario": r.scenario,
            "case_id": r.case_id,
            "source": r.source,
            "case": describe(r),
            "message": r.message or "",
        }
        for r in records
        if r.status != "ok"
    ]
