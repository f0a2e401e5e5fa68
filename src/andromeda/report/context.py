"""Everything a report shows, collected once from the records; the renderers only lay it out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from andromeda.records import STATUSES, Record, load_scan
from andromeda.report.charts import SUMMARY_NAME, Chart, render_charts
from andromeda.report.checks import find_warnings, make_warning, problems
from andromeda.report.format import fmt_value
from andromeda.report.headline import ComparisonLink, Headline, comparison_links, headline
from andromeda.report.load import (
    by_scenario,
    flatten,
    merged_env,
    read_manifest,
    summary,
)
from andromeda.report.tables import Table, scenario_tables


@dataclass
class Section:
    scenario: str
    counts: dict[str, int]
    tables: list[Table]
    charts: list[Chart]


@dataclass
class ReportData:
    run_name: str
    generated: str
    records: list[Record]
    env: dict[str, Any]
    env_rows: list[tuple[str, str]]
    manifest: str | None
    summary: dict[str, Any]
    sections: list[Section]
    warnings: list[dict[str, Any]]
    problems: list[dict[str, Any]]
    summary_chart: Chart | None = None
    charts: list[Chart] = field(default_factory=list)
    headline: Headline | None = None  # the first screen: per model, the key numbers and the best of each
    comparisons: list[ComparisonLink] = field(default_factory=list)  # <run>/compare/**/compare.html
    statuses: tuple[str, ...] = STATUSES

    def to_json(self) -> dict[str, Any]:
        """report.json: env, summary, records (as stored), warnings; plus problems and the manifest."""
        return {
            "format_version": 1,
            "generated": self.generated,
            "env": self.env,
            "summary": self.summary,
            "records": [asdict(r) for r in self.records],
            "warnings": self.warnings,
            "problems": self.problems,
            "manifest": self.manifest,
        }


def collect(run_dir: Path, with_charts: bool) -> ReportData:
    run_dir = Path(run_dir)
    scan = load_scan(run_dir)
    records = scan.records
    env, differing = merged_env(records)
    warnings = find_warnings(records, differing)
    if scan.torn:
        message = f"{scan.torn} line(s) of results.jsonl could not be read (cut short by a crash?) and are not shown"
        if scan.left_out:
            message += (f"; {scan.left_out} record(s) of the case being written then are left out too "
                        "(andromeda run ... --resume reruns that case)")
        warnings.insert(0, make_warning("unreadable", message))
    charts: list[Chart] = []
    if with_charts:
        charts, errors = render_charts(records)
        warnings += [make_warning("chart", e) for e in errors]
    counts = summary(records)
    sections = [
        Section(s, counts["by_scenario"][s], scenario_tables(s, recs), [c for c in charts if c.scenario == s])
        for s, recs in by_scenario(records).items()
    ]
    return ReportData(
        run_name=run_dir.resolve().name,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        records=records,
        env=env,
        env_rows=[(k, fmt_value(v)) for k, v in flatten(env)],
        manifest=read_manifest(run_dir),
        summary=counts,
        sections=sections,
        warnings=warnings,
        problems=problems(records),
        summary_chart=next((c for c in charts if c.name == SUMMARY_NAME), None),
        charts=charts,
        headline=headline(records),
        comparisons=comparison_links(run_dir),
    )
