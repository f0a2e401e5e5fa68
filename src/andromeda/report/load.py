"""Records -> pandas: flatten params/metrics/info into columns, summarize (records.load_scan reads results.jsonl).

Column layout (docs/report-format.md): the fixed columns, then `params.<name>`, `metrics.<name>`,
`info.<name>`, each group in order of first appearance in the records. Metric columns are float64
(NaN where a record has no value); every other column keeps the record's Python values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from andromeda.records import STATUSES, Record

MANIFEST = "manifest.yml"
FIXED_COLUMNS = ("case_id", "scenario", "source", "status", "message")
GROUPS = ("params", "metrics", "info")


def read_manifest(run_dir: Path) -> str | None:
    path = Path(run_dir) / MANIFEST
    return path.read_text(encoding="utf-8") if path.is_file() else None


def ordered_keys(records: Iterable[Record], group: str) -> list[str]:
    """Union of the keys of `record.<group>` over records, in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        for k in getattr(r, group):
            seen.setdefault(k, None)
    return list(seen)


def scenarios(records: Iterable[Record]) -> list[str]:
    return list(dict.fromkeys(r.scenario for r in records))


def by_scenario(records: Sequence[Record]) -> dict[str, list[Record]]:
    return {s: [r for r in records if r.scenario == s] for s in scenarios(records)}


def _cell(v: Any) -> Any:
    """A table cell: scalars as they are, containers as compact JSON text."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return v


def frame(records: Sequence[Record]) -> pd.DataFrame:
    """One row per record, in record order."""
    keys = {g: ordered_keys(records, g) for g in GROUPS}
    columns = list(FIXED_COLUMNS) + [f"{g}.{k}" for g in GROUPS for k in keys[g]]
    rows = []
    for r in records:
        row: dict[str, Any] = {c: getattr(r, c) for c in FIXED_COLUMNS}
        for g in GROUPS:
            values = getattr(r, g)
            row.update({f"{g}.{k}": _cell(values.get(k)) for k in keys[g]})
        rows.append(row)
    df = pd.DataFrame(rows, columns=columns, dtype=object)
    for k in keys["metrics"]:
        col = f"metrics.{k}"
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def columns_of(df: pd.DataFrame, group: str) -> list[str]:
    """Names (without the group prefix) of a frame's `<group>.*` columns."""
    prefix = group + "."
    return [c[len(prefix) :] for c in df.columns if c.startswith(prefix)]


def merged_env(records: Iterable[Record]) -> tuple[dict[str, Any], list[str]]:
    """The run's environment (first value of each key) and the keys whose value differs by record."""
    env: dict[str, Any] = {}
    differing: list[str] = []
    for r in records:
        for k, v in r.env.items():
            if k not in env:
                env[k] = v
            elif env[k] != v and k not in differing:
                differing.append(k)
    return env, differing


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [('gpu.name', 'H100'), ...] for key/value tables."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def summary(records: Sequence[Record]) -> dict[str, Any]:
    """Counts by status, overall and per scenario (every status listed, zeros included)."""

    def count(rs: Iterable[Record]) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in rs:
            counts[r.status] += 1
        return counts

    return {
        "total": len(records),
        "by_status": count(records),
        "by_scenario": {s: count(rs) for s, rs in by_scenario(records).items()},
    }


def describe(record: Record, skip: Iterable[str] = ()) -> str:
    """'andromeda:tiny mode=forward batch=1 seq_len=128': how a record is named in messages."""
    skip = set(skip)
    parts = [record.source] + [f"{k}={_cell(v)}" for k, v in record.params.items() if k not in skip]
    return " ".join(str(p) for p in parts)
