"""Tables: per-scenario CSV (raw values), and display tables rendered as Markdown, HTML rows and LaTeX.

A display table has one row per record: source, status, the parameters that vary (constant ones go
to the caption), then every metric with its unit in the header. A metric `X` with `X_ci_low` and
`X_ci_high` is shown as one cell `median [low, high]`. Fit records (`params.fit == true`) get a table
of their own. Values are formatted by `format.py`; the CSV keeps the exact numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from andromeda.records import Record
from andromeda.report.format import (
    fmt_ci,
    fmt_number,
    fmt_value,
    is_missing,
    latex_escape,
    latex_number,
    metric_header,
    param_header,
)
from andromeda.report.load import by_scenario, columns_of, frame

CI_SUFFIXES = ("_ci_low", "_ci_high")
CI_NOTE = "Columns marked [CI]: median [CI low, CI high]."
MISSING_NOTE = "— marks a value not measured (OOM, error, skipped) or not applicable."
# Summary statistics of a metric X (X_mean, X_std, ...) kept out of display tables when X is shown:
# the tables show X (the median) with its CI, X_p95 and X_cv; the CSV and report.json have them all.
STAT_DETAILS = ("mean", "std", "min", "max", "p5", "p50", "p90", "p99", "iqr", "n")
# Scenarios whose display tables show a chosen set of metrics (plus their CI, p95, CV); the rest of
# the record's metrics are named in a note under the table. Scenarios not listed show every metric.
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "memory": (
        "peak_mib",
        "peak_allocated_mib",
        "rss_peak_mib",
        "weights_mib",
        "activations_mib",
        "kv_cache_mib",
        "kv_bytes_per_token_measured",
        "kv_bytes_per_token_analytic",
    ),
}


@dataclass
class Column:
    key: str  # frame column: "source", "status", "params.batch", "metrics.latency_ms"
    header: str
    numeric: bool
    ci: tuple[str, str] | None = None  # frame columns of the CI bounds


@dataclass
class Table:
    scenario: str
    title: str
    label: str
    columns: list[Column]
    rows: list[list[Any]]  # raw values; a CI cell is (median, low, high)
    notes: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "scenario"


def write_csvs(records: Sequence[Record], out_dir: Path) -> list[Path]:
    """csv/<scenario>.csv: fixed columns, params.*, metrics.*, info.*; exact values, empty = missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, recs in by_scenario(records).items():
        path = out_dir / f"{safe_name(scenario)}.csv"
        frame(recs).to_csv(path, index=False)
        paths.append(path)
    return paths


def _is_numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if not is_missing(v)]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _shown_metrics(scenario: str, metrics: list[str]) -> tuple[list[str], list[str]]:
    """(metrics shown in display tables, metrics left to the CSV). Never drops one without saying so."""
    preferred = TABLE_METRICS.get(scenario)
    shown, hidden = [], []
    for m in metrics:
        base, _, qual = m.rpartition("_")
        detail = qual in STAT_DETAILS and base in metrics
        if preferred is not None and any(m == p or base == p for p in preferred):
            detail = detail and m not in preferred
            (hidden if detail else shown).append(m)
        elif preferred is not None or detail:
            hidden.append(m)
        else:
            shown.append(m)
    return shown, hidden


def _hidden_note(scenario: str, hidden: list[str], metrics: list[str]) -> str:
    """'latency_ms_{mean, std, n}; start_allocated_mib': the hidden metrics, details grouped by base."""
    groups: dict[str, list[str]] = {}
    for m in hidden:
        base, _, qual = m.rpartition("_")
        if qual in STAT_DETAILS and base in metrics:
            groups.setdefault(base + "_", []).append(qual)
        else:
            groups.setdefault(m, [])
    parts = [f"{b}{{{', '.join(q)}}}" if q else b for b, q in groups.items()]
    return f"Also measured, in csv/{safe_name(scenario)}.csv and report.json: {'; '.join(parts)}."


def _table(scenario: str, title: str, label: str, recs: Sequence[Record]) -> Table:
    df = frame(recs)
    columns = [Column("source", "source", False), Column("status", "status", False)]
    fixed = []
    for p in columns_of(df, "params"):
        values = list(df[f"params.{p}"])
        if p == "fit" or all(is_missing(v) for v in values):
            continue
        if len(values) > 1 and len({fmt_value(v) for v in values}) == 1:
            fixed.append(f"{p}={fmt_value(values[0])}")
            continue
        columns.append(Column(f"params.{p}", param_header(p), _is_numeric(values)))
    metrics = columns_of(df, "metrics")
    shown, hidden = _shown_metrics(scenario, metrics)
    bounds = {m + s for m in shown for s in CI_SUFFIXES if all(m + t in metrics for t in CI_SUFFIXES)}
    for m in shown:
        if m in bounds:
            continue
        ci = None
        if all(m + s in metrics for s in CI_SUFFIXES):
            ci = (f"metrics.{m}_ci_low", f"metrics.{m}_ci_high")
        columns.append(Column(f"metrics.{m}", metric_header(m, with_ci=ci is not None), True, ci))
    rows = []
    for _, row in df.iterrows():
        rows.append([(row[c.key], row[c.ci[0]], row[c.ci[1]]) if c.ci else row[c.key] for c in columns])
    notes = [f"Fixed parameters: {', '.join(fixed)}."] if fixed else []
    if any(c.ci for c in columns):
        notes.append(CI_NOTE)
    if hidden:
        notes.append(_hidden_note(scenario, hidden, metrics))
    return Table(scenario, title, label, columns, rows, notes)


# Scenarios whose records come in kinds with different metrics: one table per kind, not one wide table
# that is mostly empty cells (diagnostics: one kind per probe; training: per-step records and the summary).
SPLIT_BY: dict[str, tuple[str, dict[str, str]]] = {
    "diagnostics": ("probe", {}),
    "training": ("final", {"yes": "summary", "": "per logged step"}),
    "context_parallel": ("efficiency", {"yes": "scaling efficiency", "": "per processes and length"}),
}


def _split(scenario: str, points: Sequence[Record]) -> list[tuple[str, str, list[Record]]]:
    """(title, label, records) per kind of record; one group for scenarios not in SPLIT_BY."""
    if scenario not in SPLIT_BY:
        return [(scenario, safe_name(scenario), list(points))]
    key, names = SPLIT_BY[scenario]
    groups: dict[str, list[Record]] = {}
    for r in points:
        value = r.params.get(key)
        groups.setdefault("" if value in (None, False) else fmt_value(value), []).append(r)
    if len(groups) == 1:
        return [(scenario, safe_name(scenario), list(points))]
    out = []
    for value, recs in groups.items():
        name = names.get(value, value or f"no {key}")
        out.append((f"{scenario}: {name}", f"{safe_name(scenario)}-{safe_name(name)}", recs))
    return out


def scenario_tables(scenario: str, recs: Sequence[Record]) -> list[Table]:
    """The measurements table (one per kind of record, see SPLIT_BY), and a fits table when the scenario
    emitted fit records."""
    fits = [r for r in recs if r.params.get("fit") is True]
    points = [r for r in recs if r.params.get("fit") is not True]
    tables = []
    if points:
        tables.extend(_table(scenario, title, label, group) for title, label, group in _split(scenario, points))
    if fits:
        tables.append(_table(scenario, f"{scenario} (fits)", f"{safe_name(scenario)}-fits", fits))
    return tables


def all_tables(records: Sequence[Record]) -> list[Table]:
    return [t for s, recs in by_scenario(records).items() for t in scenario_tables(s, recs)]


def cell_text(column: Column, value: Any) -> str:
    if column.ci:
        return fmt_ci(*value)
    return fmt_number(value) if column.numeric else fmt_value(value)


def text_rows(table: Table) -> list[list[str]]:
    return [[cell_text(c, v) for c, v in zip(table.columns, row, strict=True)] for row in table.rows]


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(c.header) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else ":---" for c in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(esc(s) for s in row) + " |" for row in text_rows(table)]
    return "\n".join(lines)


def _latex_cell(column: Column, value: Any) -> str:
    if column.ci:
        median, low, high = value
        text = latex_number(fmt_number(median))
        if not (is_missing(low) and is_missing(high)):
            text += rf" {{\scriptsize [{latex_number(fmt_number(low))}, {latex_number(fmt_number(high))}]}}"
        return text
    if column.numeric:
        return latex_number(fmt_number(value))
    return latex_escape(fmt_value(value))


def to_latex(table: Table) -> str:
    """One booktabs table (needs \\usepackage{booktabs}), caption above, label tab:<scenario>."""
    spec = "".join("r" if c.numeric else "l" for c in table.columns)
    caption = " ".join(
        [f"Scenario \\texttt{{{latex_escape(table.title)}}}."]
        + [latex_escape(n) for n in table.notes]
        + [latex_escape(MISSING_NOTE)]
    )
    lines = [
        f"% scenario: {table.title}",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\small",
        f"\\caption{{{caption}}}",
        f"\\label{{tab:{table.label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(c.header) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        lines.append(" & ".join(_latex_cell(c, v) for c, v in zip(table.columns, row, strict=True)) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)


def latex_document(tables: Sequence[Table]) -> str:
    head = [
        "% Generated by `andromeda report` from results.jsonl: one table per scenario.",
        "% Needs \\usepackage{booktabs} in the preamble.",
        "",
    ]
    return "\n".join(head) + "\n\n".join(to_latex(t) for t in tables) + "\n"
