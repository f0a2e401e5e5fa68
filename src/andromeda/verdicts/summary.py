"""A comparison of models summarized per candidate: the geometric mean of its per-case gains, with a CI.

For each candidate and metric, the geometric mean of the per-case gains g_i (how many times better the
candidate is, > 1 = better; for a time metric baseline / candidate) and its CI from the per-case bootstrap
CIs, in log space: se_i = (ln hi_i - ln lo_i) / (2 z), the mean's se = sqrt(sum se_i^2) / n, CI = exp(mean ln
g_i -+ z se), z the normal quantile of the CI level. It is the uncertainty of the measured cases' mean, not a
claim about cases not measured; it is left out (n/a) when a case has no CI (one sample a side). Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from andromeda.verdicts.comparison import Comparison, fmt_factor


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


__all__ = ["CandidateSummary", "by_candidate", "geometric_mean_gain"]
