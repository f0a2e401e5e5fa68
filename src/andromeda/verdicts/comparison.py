"""Comparisons of a baseline and a candidate: statistics, multiple-comparison corrections, verdicts.

For two sample sets of one metric (docs/comparisons.md has the definitions):
  ratio       candidate median / baseline median, with a seeded percentile-bootstrap CI that
              resamples both groups independently
  p_welch     Welch's t-test (scipy.stats.ttest_ind, equal_var=False), two-sided
  p_mwu       Mann-Whitney U (scipy.stats.mannwhitneyu), two-sided; the p-value verdicts use
  cohens_d    (mean_c - mean_b) / pooled SD
  gain        how many times better the candidate is (> 1 = better), whatever the metric's direction
and a verdict against thresholds ("faster", "slower", "no significant difference", ...), each with
a one-line reason. `correct()` applies Holm or Benjamini-Hochberg across many comparisons and
re-decides with the adjusted p-values. A time or throughput verdict is "inconclusive (noisy)" when
a side was measured on a busy machine (Comparison.noisy) or a significant difference lies within the
A/A noise floor (Comparison.noise_floor; verdicts/noise.py sets both). Pairing records (across sources
of a run, or across two runs) is regress.py's job.

numpy and scipy only (no torch): the report layer uses these types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from andromeda.errors import ConfigError

Direction = Literal["lower", "higher"]
Kind = Literal["time", "throughput", "memory", "accuracy", "other"]
Outcome = Literal["better", "worse", "same", "inconclusive"]
Correction = Literal["holm", "bh", "none"]
CORRECTIONS: tuple[str, ...] = ("holm", "bh", "none")
_CORRECTION_NAMES = {"holm": "Holm", "bh": "BH"}
WORK_RTOL = 0.02  # ARCHITECTURE.md: a baseline does the same work within 2%, or the reason states the difference
_CHUNK_ELEMS = 4_000_000  # bootstrap index arrays are drawn in chunks of at most this many elements


# ---- thresholds ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    """What counts as a real difference. Defaults from the spec (shared/spec/003, validation criteria).

    speedup: factor a significant change of a time/throughput metric must reach, either way, to be
      called faster or slower (1.2 = 1.2x). memory: relative change of a memory metric (0.05 = 5%).
    max_abs_diff: tolerance of an output difference; max_abs_diff_by_dtype overrides it per dtype.
    """

    speedup: float = 1.2
    memory: float = 0.05
    max_abs_diff: float = 1e-5
    max_abs_diff_by_dtype: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speedup) and self.speedup >= 1.0):
            raise ConfigError(f"thresholds.speedup: must be a factor >= 1 (1.2 = 1.2x), got {self.speedup}")
        if not (math.isfinite(self.memory) and self.memory >= 0.0):
            raise ConfigError(f"thresholds.memory: must be a fraction >= 0 (0.05 = 5%), got {self.memory}")
        for name, v in [("max_abs_diff", self.max_abs_diff), *self.max_abs_diff_by_dtype.items()]:
            if not (math.isfinite(v) and v >= 0.0):
                raise ConfigError(f"thresholds.max_abs_diff ({name}): must be >= 0, got {v}")

    def abs_diff_tolerance(self, dtype: str | None = None) -> float:
        key = _dtype_key(dtype)
        by = {_dtype_key(k): v for k, v in self.max_abs_diff_by_dtype.items()}
        return by.get(key, self.max_abs_diff) if key else self.max_abs_diff

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Thresholds:
        data = dict(data or {})
        allowed = [f for f in cls.__dataclass_fields__]
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ConfigError(f"thresholds.{unknown[0]}: unknown field; allowed: {', '.join(allowed)}")
        return cls(**data)


_DTYPE_KEYS = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32", "fp64": "float64", "double": "float64"}


def _dtype_key(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    key = str(dtype).lower().removeprefix("torch.")
    return _DTYPE_KEYS.get(key, key)


# ---- metric direction ---------------------------------------------------------------------------
def metric_kind(metric: str, direction: Direction | None = None) -> tuple[Kind, Direction]:
    """(kind, direction) from a metric name; `direction` overrides the name's.

    accuracy (*abs_diff*, *abs_err*): lower; memory (*_mib, *_gib, *_bytes, *bytes_per_token*): lower;
    throughput (*_per_s, *tflops, *tflops_per_rank, *mfu, *mfu_measured_peak, *hfu, *hfu_measured_peak): higher;
    time (*_ms, *_s, *_us, ms_per_*): lower; loss/perplexity: lower ("other"). Any other name needs `direction`.
    """
    m = metric.lower()
    inferred: tuple[Kind, Direction] | None
    if "abs_diff" in m or "abs_err" in m:
        inferred = ("accuracy", "lower")
    elif m.endswith(("_mib", "_gib", "_bytes")) or "bytes_per_token" in m:
        inferred = ("memory", "lower")
    elif m.endswith(("_per_s", "tflops", "tflops_per_rank", "mfu", "mfu_measured_peak", "hfu", "hfu_measured_peak")):
        inferred = ("throughput", "higher")
    elif m.endswith(("_ms", "_s", "_us", "_ns")) or m.startswith("ms_per_") or "_ms_per_" in m:
        inferred = ("time", "lower")
    elif "perplexity" in m or "loss" in m:
        inferred = ("other", "lower")
    else:
        inferred = None
    if direction is not None:
        if direction not in ("lower", "higher"):
            raise ConfigError(f"direction: must be 'lower' or 'higher' (which is better), got {direction!r}")
        kind = inferred[0] if inferred and inferred[1] == direction else "other"
        return kind, direction
    if inferred is None:
        raise ConfigError(
            f"metric '{metric}': cannot tell from its name whether lower or higher is better "
            "(lower: *_ms, *_s, *_mib, *_bytes, *abs_diff*; higher: *_per_s, *tflops, *mfu, *hfu); pass a direction"
        )
    return inferred


# ---- the statistics ---------------------------------------------------------------------------
def _samples(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)  # (n,)
    if a.size == 0:
        raise ValueError(f"{what}: no samples")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: samples must be finite numbers")
    return a


def ratio_ci(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    stat: Callable[..., np.ndarray] = np.median,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of stat(candidate) / stat(baseline).

    Each of n_boot resamples draws len(baseline) indices into baseline, then len(candidate) indices
    into candidate (with replacement, independently), from numpy's default_rng(seed), in chunks.
    NaN bounds when a resampled baseline statistic is 0 (no ratio exists).
    """
    b, c = _samples(baseline, "baseline"), _samples(candidate, "candidate")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMS // max(b.size, c.size))
    ratios = np.empty(n_boot, dtype=np.float64)  # (n_boot,)
    for start in range(0, n_boot, chunk):
        k = min(n_boot, start + chunk) - start
        ib = rng.integers(0, b.size, size=(k, b.size))  # (k, n_b)
        ic = rng.integers(0, c.size, size=(k, c.size))  # (k, n_c)
        sb, sc = _row_stat(stat, b[ib]), _row_stat(stat, c[ic])  # (k,)
        if np.any(sb == 0):
            return math.nan, math.nan
        ratios[start:start + k] = sc / sb
    alpha = (1.0 - ci) / 2.0
    low, high = np.percentile(ratios, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def _row_stat(stat: Callable[..., np.ndarray], x: np.ndarray) -> np.ndarray:
    """stat(x, axis=1); the median through a sort, the same numbers several times faster than np.median."""
    if stat is not np.median:
        return stat(x, axis=1)
    s = np.sort(x, axis=1)  # (k, n)
    n = s.shape[1]
    return s[:, n // 2] if n % 2 else (s[:, n // 2 - 1] + s[:, n // 2]) / 2.0


def welch_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN with fewer than 2 samples in a group.

    Both groups constant: 1.0 if their values are equal, else 0.0 (scipy gives NaN there).
    """
    b, c = _samples(baseline, "baseline"), _samples(candidate, "candidate")
    if b.size < 2 or c.size < 2:
        return math.nan
    if np.ptp(b) == 0 and np.ptp(c) == 0:
        return 1.0 if b[0] == c[0] else 0.0
    return float(sps.ttest_ind(c, b, equal_var=False).pvalue)


def mannwhitney_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (scipy's default method: exact for small samples
    without ties, else the normal approximation with tie and continuity corrections).

    NaN with fewer than 2 samples in a group; 1.0 when every value of both groups is the same.
    """
    b, c = _samples(baseline, "baseline"), _samples(candidate, "candidate")
    if b.size < 2 or c.size < 2:
        return math.nan
    if np.ptp(np.concatenate([b, c])) == 0:
        return 1.0
    return float(sps.mannwhitneyu(c, b, alternative="two-sided").pvalue)


def cohens_d(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """(mean(candidate) - mean(baseline)) / pooled SD, the pooled variance being
    ((n_b - 1) var_b + (n_c - 1) var_c) / (n_b + n_c - 2) with ddof=1 variances.

    NaN with fewer than 2 samples in a group or a pooled SD of 0.
    """
    b, c = _samples(baseline, "baseline"), _samples(candidate, "candidate")
    nb, nc = b.size, c.size
    if nb < 2 or nc < 2:
        return math.nan
    pooled = ((nb - 1) * b.var(ddof=1) + (nc - 1) * c.var(ddof=1)) / (nb + nc - 2)
    if pooled == 0:
        return math.nan
    return float((c.mean() - b.mean()) / math.sqrt(pooled))


def adjust_pvalues(pvalues: Sequence[float], method: Correction = "holm") -> list[float]:
    """Adjusted p-values in the input order; NaN entries stay NaN and are not counted in m.

    holm: sort ascending, p'_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))  (family-wise error rate)
    bh:   sort ascending, p'_(i) = min_{j >= i} min(1, m p_(j) / j)        (false discovery rate)
    none: the p-values as they are.
    """
    if method not in CORRECTIONS:
        raise ConfigError(f"correction: unknown method {method!r}; allowed: {', '.join(CORRECTIONS)}")
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = p.copy()
    ok = np.flatnonzero(np.isfinite(p))
    if method == "none" or ok.size == 0:
        return [float(v) for v in out]
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]  # original indices, ascending p
    ranked = p[order]  # (m,)
    j = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - j + 1) * ranked))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, m * ranked / j)[::-1])[::-1]
    out[order] = adj
    return [float(v) for v in out]


# ---- one comparison -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    metric: str
    kind: Kind
    direction: Direction
    n_baseline: int
    n_candidate: int
    baseline: float  # median of the baseline samples
    candidate: float  # median of the candidate samples
    ratio: float  # candidate / baseline
    ratio_ci_low: float
    ratio_ci_high: float
    gain: float  # > 1: the candidate is better by this factor (baseline/candidate for lower-is-better)
    gain_ci_low: float
    gain_ci_high: float
    p_welch: float
    p_mwu: float
    cohens_d: float
    p_adjusted: float  # p_mwu after the correction across the family (= p_mwu when none)
    correction: str
    significant: bool | None  # None: not testable (fewer than 2 samples in a group)
    verdict: str
    outcome: Outcome
    reason: str
    threshold: float  # the threshold the verdict used (factor, fraction or tolerance)
    ci: float = 0.95
    alpha: float = 0.05
    label: str = ""  # what is compared, e.g. "latency andromeda:tiny batch=1 seq_len=64"
    baseline_label: str = ""
    candidate_label: str = ""
    dtype: str | None = None
    # the work of each side (verdicts/work.py; set for sources of one run): parameters, FLOPs per token of
    # the measured work, their ratios (candidate / baseline) and the ratio at equal work (time: ratio /
    # flops_ratio, throughput: ratio x flops_ratio; None for other kinds)
    baseline_params: int | None = None
    candidate_params: int | None = None
    baseline_flops_per_token: float | None = None
    candidate_flops_per_token: float | None = None
    params_ratio: float | None = None
    flops_ratio: float | None = None
    work_ratio: float | None = None
    notes: tuple[str, ...] = ()
    noise_floor: float | None = None  # A/A reach: ratios within 1 + this, either way, are noise (verdicts/noise.py)
    noisy: str | None = None  # why a side's timings are not trustworthy (a busy machine), or None
    thresholds: Thresholds = field(default_factory=Thresholds, repr=False, compare=False)

    @property
    def testable(self) -> bool:
        return self.n_baseline >= 2 and self.n_candidate >= 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thresholds")
        d["notes"] = list(self.notes)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare_samples(
    baseline: Sequence[float],
    candidate: Sequence[float],
    metric: str = "latency_ms",
    *,
    thresholds: Thresholds | None = None,
    alpha: float = 0.05,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    direction: Direction | None = None,
    dtype: str | None = None,
    label: str = "",
    baseline_label: str = "baseline",
    candidate_label: str = "candidate",
) -> Comparison:
    """All statistics of candidate vs baseline for one metric, and a verdict (uncorrected p)."""
    th = thresholds or Thresholds()
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: must be between 0 and 1 (exclusive), e.g. 0.05; got {alpha}")
    kind, dirn = metric_kind(metric, direction)
    b, c = _samples(baseline, f"{metric} ({baseline_label})"), _samples(candidate, f"{metric} ({candidate_label})")
    mb, mc = float(np.median(b)), float(np.median(c))
    ratio = mc / mb if mb != 0 else math.nan
    testable = b.size >= 2 and c.size >= 2
    lo, hi = ratio_ci(b, c, ci=ci, n_boot=n_boot, seed=seed) if testable else (math.nan, math.nan)
    gain, glo, ghi = _gain(ratio, lo, hi, dirn)
    p_mwu = mannwhitney_p(b, c)
    comp = Comparison(
        metric=metric, kind=kind, direction=dirn, n_baseline=int(b.size), n_candidate=int(c.size),
        baseline=mb, candidate=mc, ratio=ratio, ratio_ci_low=lo, ratio_ci_high=hi,
        gain=gain, gain_ci_low=glo, gain_ci_high=ghi,
        p_welch=welch_p(b, c), p_mwu=p_mwu, cohens_d=cohens_d(b, c), p_adjusted=p_mwu, correction="none",
        significant=None, verdict="", outcome="inconclusive", reason="", threshold=math.nan,
        ci=ci, alpha=alpha, label=label, baseline_label=baseline_label, candidate_label=candidate_label,
        dtype=dtype, thresholds=th,
    )
    return decide(comp)


def _gain(ratio: float, lo: float, hi: float, direction: Direction) -> tuple[float, float, float]:
    if direction == "higher":
        return ratio, lo, hi

    def inv(x: float) -> float:
        return 1.0 / x if (math.isfinite(x) and x != 0) else math.nan

    return inv(ratio), inv(hi), inv(lo)


# ---- verdicts -----------------------------------------------------------------------------------
def fmt_factor(x: float) -> str:
    """1.3142 -> '1.31', 12.34 -> '12.3', 288.0 -> '288'."""
    if not math.isfinite(x):
        return "?"
    return f"{x:.2f}" if x < 10 else f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def decide(comp: Comparison, p: float | None = None) -> Comparison:
    """The comparison with its verdict, outcome, reason and significance, from p (default p_adjusted).

    Significant: p < alpha and the ratio CI excludes 1 (both must agree). Then
      time/throughput/other: gain >= speedup threshold -> faster (better); 1/gain >= it -> slower
        (worse); else "within threshold" (a real difference smaller than the threshold);
      memory: relative change > +memory threshold -> "more memory" (worse), < -threshold -> "less
        memory" (better), else "within threshold";
      not significant -> "no significant difference".
    With fewer than 2 samples in a group there is no test: the point values are held against the
    thresholds alone (and the reason says so). accuracy: the candidate's value against the
    (dtype-aware) tolerance: "within tolerance" or "exceeds tolerance", no test.
    """
    th = comp.thresholds
    p = comp.p_adjusted if p is None else p
    corr = f" ({_CORRECTION_NAMES[comp.correction]})" if comp.correction in _CORRECTION_NAMES else ""
    if comp.kind == "accuracy":
        tol = th.abs_diff_tolerance(comp.dtype)
        ok = comp.candidate <= tol
        dt = f" ({comp.dtype})" if comp.dtype else ""
        reason = f"{comp.metric} {comp.candidate:.3g} {'<=' if ok else '>'} tolerance {tol:.3g}{dt}"
        return replace(comp, significant=None, threshold=tol, reason=reason,
                       verdict="within tolerance" if ok else "exceeds tolerance",
                       outcome="same" if ok else "worse")
    if not math.isfinite(comp.ratio):
        return replace(comp, significant=None, verdict="not comparable", outcome="inconclusive",
                       reason=f"baseline median is {comp.baseline:g}: no ratio", threshold=math.nan)
    testable = comp.testable
    sig: bool | None = None
    if testable:
        excl = math.isfinite(comp.ratio_ci_low) and (comp.ratio_ci_low > 1.0 or comp.ratio_ci_high < 1.0)
        sig = bool(math.isfinite(p) and p < comp.alpha and excl)
    stat_txt = (f"{fmt_p(p)}{corr}" if testable else "one value each, no test")
    if comp.kind == "memory":
        change = comp.ratio - 1.0
        t = th.memory
        ci_txt = (f", CI {_pct(comp.ratio_ci_low - 1)} to {_pct(comp.ratio_ci_high - 1)}"
                  if testable and math.isfinite(comp.ratio_ci_low) else "")
        head = f"{_pct(change)} memory{ci_txt}, {stat_txt}"
        if sig is False:
            verdict, outcome, tail = "no significant difference", "same", ""
        elif change > t:
            verdict, outcome, tail = "more memory", "worse", f"; above the {100 * t:g}% threshold"
        elif change < -t:
            verdict, outcome, tail = "less memory", "better", f"; beyond the {100 * t:g}% threshold"
        else:
            verdict, outcome, tail = "within threshold", "same", f"; within the {100 * t:g}% threshold"
        return replace(comp, significant=sig, verdict=verdict, outcome=outcome,
                       reason=head + tail + _shape_tail(comp), threshold=t)
    if not (math.isfinite(comp.gain) and comp.gain > 0):
        return replace(comp, significant=None, verdict="not comparable", outcome="inconclusive",
                       reason=f"medians {comp.baseline:g} and {comp.candidate:g}: no factor", threshold=math.nan)
    t = th.speedup
    better_word, worse_word = ("faster", "slower") if comp.kind in ("time", "throughput") else ("better", "worse")
    if comp.gain >= 1.0:
        word, factor, clo, chi = better_word, comp.gain, comp.gain_ci_low, comp.gain_ci_high
    else:
        word, factor, clo, chi = worse_word, 1.0 / comp.gain, _inv(comp.gain_ci_high), _inv(comp.gain_ci_low)
    ci_txt = f", CI {fmt_factor(clo)}-{fmt_factor(chi)}" if testable and math.isfinite(clo) else ""
    head = f"{fmt_factor(factor)}x {word}{ci_txt}, {stat_txt}"
    if sig is False:
        verdict, outcome, tail = "no significant difference", "same", ""
    elif comp.gain >= t:
        verdict, outcome, tail = better_word, "better", ""
    elif 1.0 / comp.gain >= t:
        verdict, outcome, tail = worse_word, "worse", ""
    else:
        verdict, outcome, tail = "within threshold", "same", f"; below the {fmt_factor(t)}x threshold"
    if comp.kind in ("time", "throughput") and (why := _noise(comp, sig)) is not None:
        verdict, outcome, tail = "inconclusive (noisy)", "inconclusive", f"; {why}"
    return replace(comp, significant=sig, verdict=verdict, outcome=outcome,
                   reason=head + tail + _shape_tail(comp), threshold=t)


def _noise(comp: Comparison, sig: bool | None) -> str | None:
    """Why the verdict is inconclusive (noisy), or None: a side measured on a busy machine, or a significant
    difference within the A/A noise floor (the ratio, either way, within 1 + noise_floor)."""
    if comp.noisy:
        return f"not trusted: {comp.noisy}"
    h = comp.noise_floor
    if sig and h is not None and max(comp.ratio, 1.0 / comp.ratio) <= 1.0 + h:
        return f"within the A/A noise floor (+-{100 * h:.1f}%)"
    return None


def _shape_tail(c: Comparison) -> str:
    """The work beside the verdict where it differs: a ratio beyond WORK_RTOL, or shape notes."""
    if not (c.notes or any(r and abs(r - 1) > WORK_RTOL for r in (c.params_ratio, c.flops_ratio))):
        return ""
    extra = [f"params {fmt_factor(c.params_ratio)}x" if c.params_ratio else None,
             f"FLOPs {fmt_factor(c.flops_ratio)}x" if c.flops_ratio else None,
             f"ratio at equal work {fmt_factor(c.work_ratio)}" if c.work_ratio else None]
    tail = ", ".join(e for e in extra if e)
    return f" ({tail})" if tail else ""


def _inv(x: float) -> float:
    return 1.0 / x if (math.isfinite(x) and x != 0) else math.nan


def correct(comparisons: Sequence[Comparison], method: Correction = "holm") -> list[Comparison]:
    """Adjust the Mann-Whitney p-values across the family and re-decide every verdict with them.

    Only testable comparisons (2+ samples per group; not accuracy checks) form the family.
    """
    if method not in CORRECTIONS:
        raise ConfigError(f"correction: unknown method {method!r}; allowed: {', '.join(CORRECTIONS)}")
    family = [c.p_mwu if (c.testable and c.kind != "accuracy") else math.nan for c in comparisons]
    adjusted = adjust_pvalues(family, method)
    out = []
    for c, pa in zip(comparisons, adjusted, strict=True):
        out.append(decide(replace(c, p_adjusted=pa if math.isfinite(pa) else c.p_mwu, correction=method)))
    return out


__all__ = [
    "Thresholds", "Comparison", "metric_kind", "ratio_ci", "welch_p", "mannwhitney_p",
    "cohens_d", "adjust_pvalues", "compare_samples", "decide", "correct", "fmt_factor", "fmt_p",
]
