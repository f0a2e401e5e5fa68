"""What a comparison says, framed by what it is.

- A comparison of models (the sources of one run against a baseline: a manifest's compare: section, or
  `andromeda compare RUN --baseline SOURCE`) says which candidate is faster or slower, by how much, with a
  CI: per case, and per candidate as the geometric mean over its cases. It fails nothing unless it was
  asked to be a gate (gate: true / --gate).
- A regression gate (`andromeda compare OLD NEW`, or gate: true) says PASS or FAIL: regressions are
  significant changes for the worse beyond the threshold and the noise floor, or cases newly failing.

Per-candidate summary: for each candidate and metric, the geometric mean of the per-case gains g_i (how
many times better the candidate is, > 1 = better; for a time metric baseline / candidate) and its CI from
the per-case bootstrap CIs, in log space: se_i = (ln hi_i - ln lo_i) / (2 z), the mean's
se = sqrt(sum se_i^2) / n, CI = exp(mean ln g_i -+ z se), z the normal quantile of the CI level. It is the
uncertainty of the measured cases' mean, not a claim about cases not measured; it is left out (n/a) when a
case has no CI (one sample a side). Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from andromeda.bench.compare import Comparison, fmt_factor

if TYPE_CHECKING:
    from andromeda.bench.regress import RunComparison


@dataclass(frozen=True)
class CandidateSummary:
    candidate: str
    metric: str
    kind: str
    n: int  # cases with a finite gain
    gain: float  # geometric mean of the per-case gains (> 1 = the candidate is better)
    gain_ci_low: float  # nan when a case has no CI
    gain_ci_high: float
    ci: float
    outcomes: dict[str, int]  # verdict -> cases

    @property
    def ratio(self) -> float:
        """Geometric mean of candidate / baseline (for a lower-is-better metric, 1 / gain)."""
        return self.gain

    def words(self) -> tuple[str, float, float, float]:
        """('faster' | 'slower' | 'better' | 'worse' | 'less memory' | 'more memory', factor >= 1, CI low, high)."""
        better, worse = {"time": ("faster", "slower"), "throughput": ("faster", "slower"),
                         "memory": ("less memory", "more memory")}.get(self.kind, ("better", "worse"))
        if self.gain >= 1:
            return better, self.gain, self.gain_ci_low, self.gain_ci_high
        inv = [1 / x if math.isfinite(x) and x > 0 else math.nan for x in (self.gain, self.gain_ci_high,
                                                                            self.gain_ci_low)]
        return worse, inv[0], inv[1], inv[2]

    def headline(self) -> str:
        """'1.32x slower (95% CI 1.25-1.40)'."""
        word, f, lo, hi = self.words()
        if not math.isfinite(lo):
            return f"{fmt_factor(f)}x {word} (no CI)"
        unclear = ", which includes 1: no clear difference" if lo <= 1 <= hi else ""
        return f"{fmt_factor(f)}x {word} ({100 * self.ci:g}% CI {fmt_factor(lo)}-{fmt_factor(hi)}{unclear})"

    def line(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))
        return (f"{self.candidate}, {self.metric}: {self.headline()}, geometric mean over {self.n} "
                f"case{'s' if self.n != 1 else ''} ({counts})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        word, f, lo, hi = self.words()
        d.update(word=word, factor=f, factor_ci_low=lo, factor_ci_high=hi, headline=self.headline())
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def geometric_mean_gain(gains: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                        ci: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, CI low, CI high) of per-case gains with their CIs (module docstring); CI nan if any
    case lacks one."""
    logs = [math.log(g) for g in gains]
    mean = sum(logs) / len(logs)
    z = NormalDist().inv_cdf(0.5 + ci / 2)
    if not all(math.isfinite(x) and x > 0 for x in (*lows, *highs)):
        return math.exp(mean), math.nan, math.nan
    se = math.sqrt(sum(((math.log(h) - math.log(lo)) / (2 * z)) ** 2 for lo, h in zip(lows, highs, strict=True)))
    se /= len(logs)
    return math.exp(mean), math.exp(mean - z * se), math.exp(mean + z * se)


def by_candidate(comparisons: Sequence[Comparison]) -> list[CandidateSummary]:
    """One summary per (candidate, metric), in the order they first appear; accuracy checks left out."""
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        if c.kind != "accuracy" and math.isfinite(c.gain) and c.gain > 0:
            groups.setdefault((c.candidate_label, c.metric), []).append(c)
    out = []
    for (cand, metric), cs in groups.items():
        g, lo, hi = geometric_mean_gain([c.gain for c in cs], [c.gain_ci_low for c in cs],
                                        [c.gain_ci_high for c in cs], cs[0].ci)
        outcomes: dict[str, int] = {}
        for c in cs:
            outcomes[c.verdict] = outcomes.get(c.verdict, 0) + 1
        out.append(CandidateSummary(cand, metric, cs[0].kind, len(cs), g, lo, hi, cs[0].ci, outcomes))
    return out


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


__all__ = ["CandidateSummary", "by_candidate", "geometric_mean_gain", "summary_lines"]
