"""build_report: results.jsonl in a run directory -> the report artifacts next to it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from andromeda.errors import AndromedaError
from andromeda.report.chart_specs_quality import teacher_student_latex
from andromeda.report.context import collect
from andromeda.report.html import render_html
from andromeda.report.markdown import render_markdown
from andromeda.report.tables import latex_document, write_csvs

FORMATS: tuple[str, ...] = ("csv", "json", "png", "md", "html", "tex")
NEEDS_CHARTS = {"png", "md", "html"}


def build_report(run_dir: Path, formats: Iterable[str] = FORMATS) -> dict[str, list[Path]]:
    """Write the requested artifacts into `run_dir`; return {format: [paths written]}.

    csv: csv/<scenario>.csv; json: report.json; png: charts/<name>.png (summary.png first);
    md: report.md (links the PNGs when png is built too); html: report.html (self-contained);
    tex: tables.tex (and teacher_student.tex when the run has teacher_student records).
    Raises AndromedaError if the run dir or its results.jsonl is missing or empty.
    """
    run_dir = Path(run_dir)
    wanted = list(dict.fromkeys(formats))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise AndromedaError(
            f"unknown report format(s) {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}"
        )
    data = collect(run_dir, with_charts=bool(NEEDS_CHARTS & set(wanted)))
    written: dict[str, list[Path]] = {}
    for fmt in wanted:
        if fmt == "csv":
            written[fmt] = write_csvs(data.records, run_dir / "csv")
        elif fmt == "png":
            charts_dir = run_dir / "charts"
            charts_dir.mkdir(parents=True, exist_ok=True)
            written[fmt] = []
            for chart in data.charts:
                path = charts_dir / f"{chart.name}.png"
                path.write_bytes(chart.png)
                written[fmt].append(path)
        elif fmt == "json":
            text = json.dumps(data.to_json(), indent=1, allow_nan=False, default=str)
            written[fmt] = [_write(run_dir / "report.json", text + "\n")]
        elif fmt == "md":
            text = render_markdown(data, link_charts="png" in wanted)
            written[fmt] = [_write(run_dir / "report.md", text)]
        elif fmt == "html":
            written[fmt] = [_write(run_dir / "report.html", render_html(data))]
        elif fmt == "tex":
            tables = [t for section in data.sections for t in section.tables]
            written[fmt] = [_write(run_dir / "tables.tex", latex_document(tables))]
            ts = teacher_student_latex(data.records)  # the source document's teacher/student table
            if ts:
                written[fmt].append(_write(run_dir / "teacher_student.tex", ts))
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
