"""A whole comparison's result, framed by what it is: plain, torch-free data the report reads.

- A comparison of models (the sources of one run against a baseline: a manifest's compare: section, or
  `andromeda compare RUN --baseline SOURCE`) says which candidate is faster or slower, by how much, with a
  CI: per case, and per candidate as the geometric mean over its cases (summary.py). It fails nothing
  unless it was asked to be a gate (gate: true / --gate).
- A regression gate (`andromeda compare OLD NEW`, or gate: true) says PASS or FAIL: regressions are
  significant changes for the worse beyond the threshold and the noise floor, or cases newly failing.

RunComparison holds the per-case Comparisons (comparison.py) and the status changes; summary_lines() is
its text. regress.py makes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from andromeda.verdicts.comparison import Comparison, Thresholds, fmt_factor
from andromeda.verdicts.summary import by_candidate


@dataclass
class StatusChange:
    label: str
    old: str
    new: str
    message: str | None
    regression: bool  # ran (ok) in OLD, oom/error in NEW


@dataclass
class RunComparison:
    old: str
    new: str
    metrics: list[str]
    comparisons: list[Comparison]
    status_changes: list[StatusChange] = field(default_factory=list)
    unmatched_old: list[str] = field(default_factory=list)  # cases only in OLD
    unmatched_new: list[str] = field(default_factory=list)
    matched_by_id: int = 0
    matched_by_params: int = 0
    without_metric: int = 0  # matched ok pairs that lack every compared metric
    correction: str = "holm"
    alpha: float = 0.05
    thresholds: Thresholds = field(default_factory=Thresholds)
    noise_floor_old: float | None = None  # median A/A reach (noise.NoiseFloor.reach, halves) over OLD's cases
    noise_floor_new: float | None = None
    baseline_source: str | None = None  # set when the sources of one run were compared (compare_sources)
    gate: bool = True  # exit 1 on a regression; False for a comparison of models (compare_sources without gate)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.outcome == "worse"]

    @property
    def improvements(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.outcome == "better"]

    @property
    def failures(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.regression]

    @property
    def exit_code(self) -> int:
        return 1 if self.gate and (self.regressions or self.failures) else 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.comparisons:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    @property
    def title(self) -> str:
        if self.baseline_source is not None:
            return f"{', '.join(self.metrics)}: {self.new} vs {self.baseline_source}"
        return f"{', '.join(self.metrics)}: NEW vs OLD"

    def summary_lines(self) -> list[str]:
        """The comparison as text, framed as a gate or as a comparison of models (summary_lines below)."""
        return summary_lines(self)

    @property
    def kind(self) -> str:
        """'gate' (OLD vs NEW, or models with gate: true): PASS / FAIL; 'models': faster / slower, never fails."""
        return "gate" if self.gate else "models"

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old, "new": self.new, "baseline_source": self.baseline_source, "metrics": self.metrics,
            "correction": self.correction, "alpha": self.alpha,
            "thresholds": {**asdict(self.thresholds),
                           "max_abs_diff_by_dtype": dict(self.thresholds.max_abs_diff_by_dtype)},
            "matched_by_id": self.matched_by_id, "matched_by_params": self.matched_by_params,
            "without_metric": self.without_metric,
            "noise_floor_old": self.noise_floor_old, "noise_floor_new": self.noise_floor_new,
            "counts": self.counts(), "exit_code": self.exit_code, "kind": self.kind,
            "by_candidate": [c.to_dict() for c in by_candidate(self.comparisons)],
            "regressions": len(self.regressions), "improvements": len(self.improvements),
            "comparisons": [c.to_dict() for c in self.comparisons],
            "status_changes": [asdict(s) for s in self.status_changes],
            "unmatched_old": self.unmatched_old, "unmatched_new": self.unmatched_new,
            "summary": self.summary_lines(),
        }


def _better_worse_words(comparisons: Sequence[Comparison]) -> tuple[str, str]:
    kinds = {c.kind for c in comparisons}
    return ("faster", "slower") if kinds and kinds <= {"time", "throughput"} else ("better", "worse")


def summary_lines(r: RunComparison) -> list[str]:
    """The comparison as text; the last line is its headline (a gate's PASS / FAIL, or the models' verdict)."""
    th = r.thresholds
    corr = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no"}[r.correction]
    models = r.baseline_source is not None
    if models:
        lines = [f"{r.old}: models {r.new} against the baseline {r.baseline_source}"
                 + (" (a gate: gate: true)" if r.gate else ""),
                 f"{r.matched_by_params} (candidate, case) pairs matched by scenario and params"]
    else:
        how = f"{r.matched_by_id} by case id, {r.matched_by_params} by source+scenario+params"
        lines = [f"regression gate: OLD {r.old}  ->  NEW {r.new}",
                 f"{r.matched_by_id + r.matched_by_params} cases matched ({how})"]
    lines[-1] += (f"; {len(r.comparisons)} comparisons of {', '.join(r.metrics)}; {corr} correction, "
                  f"alpha {r.alpha:g}; thresholds {fmt_factor(th.speedup)}x speed, {100 * th.memory:g}% memory")
    names = ("baseline", "candidates") if models else ("OLD", "NEW")
    floors = [(n, f) for n, f in zip(names, (r.noise_floor_old, r.noise_floor_new), strict=True) if f is not None]
    if floors:
        lines.append("A/A noise floor (median over cases of how far from 1 the ratio CI of a case's first vs "
                     "second half reaches): " + ", ".join(f"{n} ±{100 * f:.1f}%" for n, f in floors)
                     + "; differences within it (or within a case's own) are noise")
    if noisy := sum(c.noisy is not None for c in r.comparisons):
        lines.append(f"{noisy} comparison(s) of cases measured while other processes competed for the CPU: "
                     "inconclusive (noisy), never "
                     + ("a verdict" if models else "regressions") + "; rerun on a quiet machine to decide them")
    summaries = by_candidate(r.comparisons)
    if models and summaries:
        lines.append("per candidate (geometric mean over its cases of the ratio of medians):")
        lines += [f"  {s.line()}" for s in summaries]
    if models:
        good, bad = _better_worse_words(r.comparisons)
        groups = ((good, r.improvements), (bad, r.regressions))
    else:
        groups = (("regressions", r.regressions), ("improvements", r.improvements))
    for title, items in groups:
        lines.append(f"{title}: {len(items)}")
        lines += [f"  {c.candidate_label + ': ' if models else ''}{c.label} [{c.metric}]: {c.reason}" for c in items]
    if r.status_changes:
        lines.append(f"status changes: {len(r.status_changes)}")
        lines += [f"  {s.label}: {s.old} -> {s.new}" + (f" ({s.message})" if s.message else "")
                  for s in r.status_changes]
    shown = {c.verdict for c in (*r.regressions, *r.improvements)}
    rest = {k: v for k, v in r.counts().items() if k not in shown}
    if rest:
        lines.append("other: " + ", ".join(f"{v} {k}" for k, v in rest.items()))
    if r.unmatched_old or r.unmatched_new:
        lines.append(f"unmatched: {len(r.unmatched_old)} only in OLD, {len(r.unmatched_new)} only in NEW")
    if r.without_metric:
        lines.append(f"{r.without_metric} matched case(s) lack {', '.join(r.metrics)}")
    if models and not r.gate:
        heads = [f"{s.candidate} {s.headline()}" + (f" [{s.metric}]" if len(r.metrics) > 1 else "")
                 for s in summaries]
        lines.append(f"verdict vs {r.baseline_source}: " + ("; ".join(heads) if heads else "nothing comparable"))
        return lines
    n_reg, n_fail = len(r.regressions), len(r.failures)
    worse = "significant regression(s) beyond threshold" if not models else "comparison(s) significantly worse"
    verdict = "PASS" if r.exit_code == 0 else (
        f"FAIL ({n_reg} {worse}" + (f", {n_fail} case(s) newly failing" if n_fail else "") + ")")
    lines.append(f"result: {verdict}")
    return lines


__all__ = ["RunComparison", "StatusChange", "summary_lines"]
