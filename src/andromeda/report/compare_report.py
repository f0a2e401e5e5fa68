"""Comparison reports: Markdown, HTML, LaTeX, CSV and JSON tables, and a ratio-with-CI chart.

Reads the verdicts' data (Comparison, RunComparison, the per-candidate summary: verdicts/comparison.py,
run_comparison.py, summary.py) with pandas, matplotlib and jinja2 only, never torch. A comparison of models
reads faster / slower with a per-candidate geometric mean; a regression gate reads PASS / FAIL.

write_compare_report(result, out_dir): compare.{md,html,tex,csv,json,png}
(The claims report is report/claims_report.py.)
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, StrictUndefined, select_autoescape
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from andromeda.errors import AndromedaError
from andromeda.report.format import MISSING, fmt_number, latex_escape, latex_number, unit_of
from andromeda.report.html import data_uri
from andromeda.verdicts.comparison import Comparison
from andromeda.verdicts.run_comparison import RunComparison
from andromeda.verdicts.summary import by_candidate

COMPARE_FORMATS: tuple[str, ...] = ("md", "html", "tex", "csv", "json", "png")
MAX_CHART_ROWS = 60
_ORDER = {"worse": 0, "better": 1, "same": 2, "inconclusive": 3}
_COLORS = {"worse": "#c0392b", "better": "#1e8449", "same": "#7f8c8d", "inconclusive": "#b7950b"}


# ---- rows -----------------------------------------------------------------------------------------
def ordered(comparisons: Iterable[Comparison]) -> list[Comparison]:
    """Regressions first, then improvements, then the rest; within each, the largest change first."""
    def key(c: Comparison) -> tuple[int, float]:
        g = c.gain if (math.isfinite(c.gain) and c.gain > 0) else 1.0
        return _ORDER.get(c.outcome, 9), -abs(math.log(g))

    return sorted(comparisons, key=key)


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return MISSING
    return "<1e-6" if p < 1e-6 else f"{p:.2g}"


def _ratio_cell(c: Comparison) -> str:
    if not math.isfinite(c.ratio):
        return MISSING
    if math.isfinite(c.ratio_ci_low):
        return f"{c.ratio:.3f} [{c.ratio_ci_low:.3f}, {c.ratio_ci_high:.3f}]"
    return f"{c.ratio:.3f}"


def _value(v: float, metric: str) -> str:
    unit = unit_of(metric)
    return f"{fmt_number(v)} {unit}".strip() if math.isfinite(v) else MISSING


def display_columns(comparisons: Sequence[Comparison]) -> list[tuple[str, str]]:
    """(key, header) of the columns a display table shows; constant or empty columns are left out."""
    cols = [("label", "case")]
    if len({c.candidate_label for c in comparisons}) > 1:
        cols.append(("candidate_label", "candidate"))
    if len({c.metric for c in comparisons}) > 1:
        cols.append(("metric", "metric"))
    cols += [("baseline", "baseline"), ("candidate", "candidate value"), ("ratio", "ratio [CI]"),
             ("p_welch", "p Welch"), ("p_mwu", "p MWU")]
    if any(c.correction != "none" for c in comparisons):
        cols.append(("p_adjusted", "p adj."))
    cols.append(("cohens_d", "d"))
    if any(c.params_ratio for c in comparisons):
        cols.append(("params_ratio", "params ratio (cand. / base)"))
    if any(c.flops_ratio for c in comparisons):
        cols.append(("flops_ratio", "FLOPs/token ratio (cand. / base)"))
    if any(c.work_ratio for c in comparisons):
        cols.append(("work_ratio", "ratio at equal work"))
    cols.append(("verdict", "verdict"))
    return cols


def cell(c: Comparison, key: str) -> str:
    if key == "ratio":
        return _ratio_cell(c)
    if key in ("baseline", "candidate"):
        return _value(getattr(c, key), c.metric)
    if key in ("p_welch", "p_mwu", "p_adjusted"):
        return _p(getattr(c, key))
    if key == "cohens_d":
        return f"{c.cohens_d + 0.0:.2f}".replace("-0.00", "0.00") if math.isfinite(c.cohens_d) else MISSING
    if key in ("params_ratio", "flops_ratio"):  # the ratio, then both sides' numbers
        v = getattr(c, key)
        side = "params" if key == "params_ratio" else "flops_per_token"
        b, n = getattr(c, f"baseline_{side}"), getattr(c, f"candidate_{side}")
        sides = f" ({_si(n)} / {_si(b)})" if (b and n) else ""
        return f"{v:.3f}x{sides}" if v else MISSING
    if key == "work_ratio":
        return f"{c.work_ratio:.3f}" if c.work_ratio else MISSING
    return str(getattr(c, key))


def _si(x: float) -> str:
    """149516544 -> '150M', 2461066240 -> '2.46G', 640.0 -> '640'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def comparison_frame(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """Every field of every comparison, exact values (the CSV)."""
    rows = [c.to_dict() for c in comparisons]
    for r in rows:
        r["notes"] = "; ".join(r["notes"])
    return pd.DataFrame(rows)


def _caption(comparisons: Sequence[Comparison]) -> str:
    c0 = comparisons[0]
    parts = [f"Candidate vs baseline ({c0.baseline_label}): ratio = candidate / baseline of medians with its "
             f"{100 * c0.ci:g}% bootstrap CI; p-values two-sided (Welch's t, Mann-Whitney U); d = Cohen's d."]
    if c0.correction != "none":
        parts.append(f"p adj.: Mann-Whitney p after {'Holm' if c0.correction == 'holm' else 'Benjamini-Hochberg'} "
                     f"correction over {len(comparisons)} comparisons; significant = p adj. < {c0.alpha:g} "
                     "and a CI that excludes 1.")
    if any(c.verdict == "inconclusive (noisy)" for c in comparisons):
        parts.append("inconclusive (noisy): a side ran while other processes competed for the CPU, or the difference "
                     "lies within the A/A noise floor (ratio within 1 ± half the CI width of a run against itself); "
                     "never a regression.")
    if any(c.work_ratio for c in comparisons):
        parts.append("Work: params and FLOPs per token of the measured work, candidate / baseline (candidate's "
                     "and baseline's numbers in brackets); ratio at equal work = a time ratio / the FLOPs ratio "
                     "(time per FLOP), a throughput ratio x it (FLOP/s). A baseline matches within 2%, or the "
                     "verdict's reason states the difference.")
    if len({c.metric for c in comparisons}) == 1:
        parts.append(f"Metric: {c0.metric} ({'lower' if c0.direction == 'lower' else 'higher'} is better).")
    return " ".join(parts)


# ---- Markdown / LaTeX / HTML tables ---------------------------------------------------------------
def _md_esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def comparisons_markdown_table(comparisons: Sequence[Comparison], with_reason: bool = True) -> str:
    rows = ordered(comparisons)
    cols = display_columns(rows)
    heads = [h for _, h in cols] + (["reason"] if with_reason else [])
    text_keys = {"label", "candidate_label", "metric", "verdict"}
    align = [":---" if k in text_keys else "---:" for k, _ in cols] + ([":---"] if with_reason else [])
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    for c in rows:
        cells = [cell(c, k) for k, _ in cols]
        cells[-1] = f"**{cells[-1]}**" if c.outcome in ("worse", "better") else cells[-1]
        if with_reason:
            cells.append(c.reason)
        lines.append("| " + " | ".join(_md_esc(x) for x in cells) + " |")
    return "\n".join(lines)


def comparisons_latex(comparisons: Sequence[Comparison], label: str = "compare") -> str:
    """One booktabs table (\\usepackage{booktabs}), caption above, label tab:<label>."""
    rows = ordered(comparisons)
    cols = display_columns(rows)
    text_keys = {"label", "candidate_label", "metric", "verdict"}
    spec = "".join("l" if k in text_keys else "r" for k, _ in cols)
    lines = [
        "\\begin{table}[htbp]", "\\centering", "\\small",
        f"\\caption{{{latex_escape(_caption(rows))}}}", f"\\label{{tab:{label}}}",
        f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
        " & ".join(latex_escape(h) for _, h in cols) + " \\\\", "\\midrule",
    ]
    for c in rows:
        cells = [latex_escape(cell(c, k)) if k in text_keys else _latex_num(cell(c, k)) for k, _ in cols]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_num(text: str) -> str:
    return "$<10^{-6}$" if text == "<1e-6" else latex_number(text)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.worse td{background:#fdecea}tr.better td{background:#eaf7ee}.reason{color:#555;min-width:22rem}
td{vertical-align:top}td:first-child{min-width:16rem}
pre{background:#f7f7f7;padding:.8rem;white-space:pre-wrap}.result-pass{color:#1e8449}.result-fail{color:#c0392b}
.result-models{color:#1d2a44}img{max-width:100%}.scroll{overflow-x:auto}
</style></head><body>
<h1>{{ title }}</h1>
<p class="{{ result_class }}"><strong>{{ result_line }}</strong></p>
{% if candidates %}<h2>Per candidate</h2>
<div class="scroll"><table class="verdicts"><thead><tr><th>candidate</th><th>metric</th>
<th>verdict (geometric mean)</th><th class="num">cases</th><th>cases by verdict</th></tr></thead><tbody>
{% for c in candidates %}<tr><td>{{ c.candidate }}</td><td>{{ c.metric }}</td><td>{{ c.headline }}</td>
<td class="num">{{ c.n }}</td><td>{{ c.outcomes }}</td></tr>{% endfor %}
</tbody></table></div>{% endif %}
<pre>{{ summary }}</pre>
{% if chart %}<img alt="ratio with CI per comparison" src="{{ chart }}">{% endif %}
<p>{{ caption }}</p>
<div class="scroll"><table><thead><tr>
{% for h in heads %}<th>{{ h }}</th>{% endfor %}<th>reason</th></tr></thead><tbody>
{% for r in rows %}<tr class="{{ r.outcome }}">
{% for v, num in r.cells %}<td{% if num %} class="num"{% endif %}>{{ v }}</td>{% endfor %}
<td class="reason">{{ r.reason }}</td></tr>
{% endfor %}</tbody></table></div>
{% if changes %}<h2>Status changes</h2><ul>{% for s in changes %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}
</body></html>
"""


def candidate_rows(result: RunComparison) -> list[dict[str, Any]]:
    """The per-candidate verdicts (verdicts/summary.py) as table rows."""
    return [{"candidate": c.candidate, "metric": c.metric, "headline": c.headline(), "n": c.n,
             "outcomes": ", ".join(f"{v} {k}" for k, v in sorted(c.outcomes.items(), key=lambda kv: -kv[1]))}
            for c in by_candidate(result.comparisons)]


def comparisons_html(result: RunComparison, chart: bytes | None = None, title: str = "Comparison") -> str:
    rows = ordered(result.comparisons)
    cols = display_columns(rows) if rows else []
    text_keys = {"label", "candidate_label", "metric", "verdict"}
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True), undefined=StrictUndefined)
    summary = result.summary_lines()
    kind = "result-models" if result.kind == "models" else "result-pass" if result.exit_code == 0 else "result-fail"
    return env.from_string(_HTML).render(
        title=title, result_line=summary[-1], result_class=kind, summary="\n".join(summary[:-1]),
        candidates=candidate_rows(result) if result.kind == "models" else [],
        chart=data_uri(chart) if chart else None, caption=_caption(rows) if rows else "",
        heads=[h for _, h in cols],
        rows=[{"outcome": c.outcome, "reason": c.reason,
               "cells": [(cell(c, k), k not in text_keys) for k, _ in cols]} for c in rows],
        changes=[f"{s.label}: {s.old} -> {s.new}" + (f" ({s.message})" if s.message else "")
                 for s in result.status_changes],
    )


# ---- chart ----------------------------------------------------------------------------------------
_NICE_MANTISSAS = (1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
MIN_TICK_GAP = 0.09  # ticks at least this share of the axis apart (in log space): labels never overlap


def ratio_ticks(lo: float, hi: float, fixed: Sequence[float] = (1.0,), min_gap: float = MIN_TICK_GAP) -> list[float]:
    """Ticks for a log axis from lo to hi: the fixed ones inside it (1 and the threshold band) first, then round
    numbers (powers of 10, then 2 and 5 times them, then other round mantissas, then 1 +- small steps for a
    narrow axis), each kept only if it lies at least `min_gap` of the axis's log width from every kept tick,
    so labels cannot overlap however wide a noisy CI makes the axis."""
    gap = min_gap * math.log(hi / lo)
    kept: list[float] = []
    for f in fixed:
        if lo <= f <= hi and all(abs(math.log(f / g)) >= gap for g in kept):
            kept.append(f)
    cands: list[tuple[int, float]] = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in _NICE_MANTISSAS:
            cands.append((0 if m == 1 else 1 if m in (2.0, 5.0) else 2, round(m * 10.0 ** k, 12)))
    for j, step in enumerate((0.1, 0.05, 0.02, 0.01, 0.005)):
        cands += [(3 + j, round(1 + i * step, 12)) for i in range(-10, 11) if i]
    for _, _, c in sorted((r, abs(math.log(c)), c) for r, c in cands if lo <= c <= hi):
        if all(abs(math.log(c / g)) >= gap for g in kept):
            kept.append(c)
    return sorted(kept)


def _short_labels(labels: list[str]) -> tuple[list[str], str]:
    """Words every label shares move to a common caption: (short labels, shared words)."""
    split = [lb.split(" ") for lb in labels]
    shared = [w for w in split[0] if all(w in s for s in split[1:])] if len(labels) > 1 else []
    short = [" ".join(w for w in s if w not in shared) or " ".join(s) for s in split]
    return [x if len(x) <= 70 else x[:67] + "..." for x in short], " ".join(shared)


def ratio_chart(comparisons: Sequence[Comparison], title: str = "Candidate vs baseline") -> bytes | None:
    """Forest plot: each comparison's gain (times better, > 1 = better) with its CI, log scale;
    coloured by outcome, with the threshold band (dashed) when every comparison shares one."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows = [c for c in ordered(comparisons) if math.isfinite(c.gain) and c.gain > 0]
    if not rows:
        return None
    shown = rows[:MAX_CHART_ROWS]
    n = len(shown)
    fig = Figure(figsize=(9.0, 1.9 + 0.28 * n), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(n))[::-1]
    for y, c in zip(ys, shown, strict=True):
        color = _COLORS.get(c.outcome, "#333333")
        if math.isfinite(c.gain_ci_low) and math.isfinite(c.gain_ci_high):
            ax.plot([c.gain_ci_low, c.gain_ci_high], [y, y], color=color, linewidth=2, solid_capstyle="butt")
        ax.plot([c.gain], [y], "o", color=color, markersize=5)
    ax.axvline(1.0, color="#333333", linewidth=1)
    kinds = {c.kind for c in shown}
    th = shown[0].thresholds
    band: tuple[float, float] | None = None
    if kinds <= {"time", "throughput", "other"} and len({c.threshold for c in shown}) == 1:
        band = (1.0 / th.speedup, th.speedup)
    elif kinds == {"memory"} and th.memory < 1:
        band = (1.0 / (1.0 + th.memory), 1.0 / (1.0 - th.memory))
    for x in band or ():
        ax.axvline(x, color="#999999", linewidth=1, linestyle="--")
    many_cands = len({r.candidate_label for r in shown}) > 1
    many_metrics = len({r.metric for r in shown}) > 1
    labels = [c.label + (f" [{c.candidate_label}]" if many_cands else "") + (f" · {c.metric}" if many_metrics else "")
              for c in shown]
    labels, shared = _short_labels(labels)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xscale("log")
    lows = [c.gain_ci_low if math.isfinite(c.gain_ci_low) else c.gain for c in shown]
    highs = [c.gain_ci_high if math.isfinite(c.gain_ci_high) else c.gain for c in shown]
    lo = min(lows + [band[0] if band else 1.0]) / 1.08
    hi = max(highs + [band[1] if band else 1.0]) * 1.08
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(ratio_ticks(lo, hi, [1.0, *(band or ())])))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}x"))
    ax.set_ylim(-0.7, n - 0.3)
    what = "speedup" if kinds <= {"time", "throughput"} else "times better"
    ax.set_xlabel(f"{what}, candidate vs baseline (> 1 = better)\nmedian ratio and {100 * shown[0].ci:g}% CI")
    more = f" ({n} of {len(rows)} shown)" if len(rows) > n else ""
    import textwrap

    fig.suptitle(textwrap.fill(title + more, 100), fontsize=10)
    if shared:
        ax.set_title(shared, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    present = [o for o in ("worse", "better", "same", "inconclusive") if any(c.outcome == o for c in shown)]
    good, bad = ("faster", "slower") if kinds <= {"time", "throughput"} else ("better", "worse")
    names = {"worse": f"{bad} (significant, beyond threshold)", "better": f"{good} (significant, beyond threshold)",
             "same": "no significant difference / within threshold",
             "inconclusive": "inconclusive (noisy: busy machine or within the A/A noise floor; or no test)"}
    handles = [Line2D([], [], color=_COLORS[o], marker="o", linewidth=2, label=names[o]) for o in present]
    if band:
        handles.append(Line2D([], [], color="#999999", linestyle="--", label="threshold"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=2, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ---- whole reports --------------------------------------------------------------------------------
def comparisons_markdown(result: RunComparison, chart_name: str | None = None, title: str = "Comparison") -> str:
    summary = result.summary_lines()
    out = [f"# {title}", "", f"**{summary[-1]}**", ""]
    if result.kind == "models" and (rows := candidate_rows(result)):
        out += ["| candidate | metric | verdict (geometric mean) | cases | cases by verdict |",
                "|---|---|---|---:|---|"]
        out += [f"| {_md_esc(r['candidate'])} | {r['metric']} | {r['headline']} | {r['n']} | {r['outcomes']} |"
                for r in rows] + [""]
    out += ["```", *summary[:-1], "```", ""]
    if chart_name:
        out += [f"![ratio with CI per comparison]({chart_name})", ""]
    if result.comparisons:
        out += [_caption(ordered(result.comparisons)), "", comparisons_markdown_table(result.comparisons), ""]
    if result.status_changes:
        out += ["## Status changes", ""]
        out += [f"- {s.label}: {s.old} -> {s.new}" + (f" ({s.message})" if s.message else "")
                for s in result.status_changes]
        out.append("")
    for side, items in (("only in the baseline run", result.unmatched_old), ("only in the candidate run",
                                                                              result.unmatched_new)):
        if items:
            out += [f"## Cases {side}", ""] + [f"- {x}" for x in items] + [""]
    return "\n".join(out)


def write_compare_report(result: RunComparison, out_dir: str | Path, formats: Iterable[str] = COMPARE_FORMATS,
                         title: str = "Comparison") -> dict[str, list[Path]]:
    """compare.md, compare.html (self-contained), compare.tex, compare.csv, compare.json, compare.png."""
    wanted = list(dict.fromkeys(formats))
    bad = [f for f in wanted if f not in COMPARE_FORMATS]
    if bad:
        raise AndromedaError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(COMPARE_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = ratio_chart(result.comparisons, result.title) if {"png", "html", "md"} & set(wanted) else None
    written: dict[str, list[Path]] = {}
    for fmt in wanted:
        path = out / f"compare.{fmt}"
        if fmt == "png":
            if chart is None:
                continue
            path.write_bytes(chart)
        elif fmt == "md":
            link = "compare.png" if chart is not None and "png" in wanted else None
            path.write_text(comparisons_markdown(result, link, title), encoding="utf-8")
        elif fmt == "html":
            path.write_text(comparisons_html(result, chart, title), encoding="utf-8")
        elif fmt == "tex":
            text = comparisons_latex(result.comparisons) if result.comparisons else "% no comparisons\n"
            path.write_text(text, encoding="utf-8")
        elif fmt == "csv":
            comparison_frame(result.comparisons).to_csv(path, index=False)
        elif fmt == "json":
            path.write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False, default=str) + "\n",
                            encoding="utf-8")
        written[fmt] = [path]
    return written


__all__ = [
    "COMPARE_FORMATS", "write_compare_report", "comparisons_markdown", "comparisons_markdown_table",
    "comparisons_latex", "comparisons_html", "comparison_frame", "ratio_chart", "ratio_ticks", "ordered",
    "candidate_rows",
]
