"""report.md: GitHub-flavoured Markdown; charts linked as charts/<name>.png next to it."""

from __future__ import annotations

from andromeda.report.context import ReportData
from andromeda.report.tables import MISSING_NOTE, to_markdown


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _kv_table(headers: list[str], rows: list[list[str]], numeric_from: int | None = None) -> list[str]:
    align = [":---" if numeric_from is None or i < numeric_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]


def render_markdown(data: ReportData, link_charts: bool = True) -> str:
    s = data.summary
    counts = ", ".join(f"{s['by_status'][st]} {st}" for st in data.statuses)
    out = [
        f"# Andromeda benchmark report: {data.run_name}",
        "",
        f"Generated {data.generated} from `results.jsonl`: {s['total']} records ({counts}).",
        "",
    ]
    if link_charts and data.summary_chart:
        out += [f"![Summary](charts/{data.summary_chart.name}.png)", ""]
    out += ["## Summary", ""]
    rows = [
        [sc] + [str(c[st]) for st in data.statuses] + [str(sum(c.values()))]
        for sc, c in s["by_scenario"].items()
    ]
    rows.append(["**all**"] + [str(s["by_status"][st]) for st in data.statuses] + [str(s["total"])])
    out += _kv_table(["scenario", *data.statuses, "total"], rows, numeric_from=1) + [""]

    out += ["## Warnings", ""]
    out += [f"- **{w['kind']}**: {w['message']}" for w in data.warnings] or ["None."]
    out += ["", "## Errors, OOM and skipped", ""]
    if data.problems:
        out += _kv_table(
            ["status", "scenario", "case", "message"],
            [[p["status"], p["scenario"], p["case"], p["message"]] for p in data.problems],
        )
    else:
        out.append("None: every case produced a measurement.")
    out.append("")

    for sec in data.sections:
        out += [f"## Scenario: {sec.scenario}", ""]
        if link_charts:
            out += [f"![{c.title}](charts/{c.name}.png)" for c in sec.charts]
            out += [""] if sec.charts else []
        for t in sec.tables:
            out += [f"### {t.title}", ""] if len(sec.tables) > 1 else []
            out += [" ".join([*t.notes, MISSING_NOTE]), "", to_markdown(t), ""]

    out += ["## Environment", ""]
    out += _kv_table(["key", "value"], [[k, v] for k, v in data.env_rows]) if data.env_rows else ["(none)"]
    out.append("")
    if data.manifest is not None:
        out += ["## Manifest", "", "```yaml", data.manifest.rstrip("\n"), "```", ""]
    return "\n".join(out)
