"""verdicts.comparison against scipy and direct computations on fixed samples; verdicts on planted differences."""

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from andromeda.errors import ConfigError
from andromeda.verdicts.comparison import (
    Thresholds,
    adjust_pvalues,
    cohens_d,
    compare_samples,
    correct,
    mannwhitney_p,
    metric_kind,
    ratio_ci,
    welch_p,
)
from andromeda.verdicts.noise import noise_floor


@pytest.fixture
def pair():
    rng = np.random.default_rng(42)
    b = rng.lognormal(np.log(20.0), 0.08, size=30)  # baseline latencies (ms)
    c = rng.lognormal(np.log(18.0), 0.12, size=25)  # candidate: different n and spread
    return b, c


# ---- p-values, effect size, CI against references ---------------------------------------------------
def test_welch_p_matches_scipy_and_the_formula(pair):
    b, c = pair
    assert welch_p(b, c) == pytest.approx(sps.ttest_ind(c, b, equal_var=False).pvalue, rel=1e-12)
    vb, vc = b.var(ddof=1) / b.size, c.var(ddof=1) / c.size
    t = (c.mean() - b.mean()) / math.sqrt(vb + vc)
    df = (vb + vc) ** 2 / (vb**2 / (b.size - 1) + vc**2 / (c.size - 1))  # Welch-Satterthwaite
    assert welch_p(b, c) == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)


def test_mannwhitney_p_matches_scipy_and_the_normal_approximation(pair):
    b, c = pair
    b = np.round(b, 1)  # ties, so the tie correction matters
    c = np.round(c, 1)
    assert mannwhitney_p(b, c) == pytest.approx(sps.mannwhitneyu(c, b, alternative="two-sided").pvalue, rel=1e-12)
    # by hand: U from rank sums, normal approximation with tie and continuity corrections
    n1, n2 = c.size, b.size
    ranks = sps.rankdata(np.concatenate([c, b]))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    n = n1 + n2
    _, counts = np.unique(np.concatenate([c, b]), return_counts=True)
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - (counts**3 - counts).sum() / (n * (n - 1))))
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    assert mannwhitney_p(b, c) == pytest.approx(2 * sps.norm.sf(z), rel=1e-9)


def test_cohens_d_is_the_pooled_sd_formula(pair):
    b, c = pair
    ssb = sum((x - b.mean()) ** 2 for x in b)
    ssc = sum((x - c.mean()) ** 2 for x in c)
    pooled = math.sqrt((ssb + ssc) / (b.size + c.size - 2))
    assert cohens_d(b, c) == pytest.approx((c.mean() - b.mean()) / pooled, rel=1e-12)
    assert cohens_d([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(1.0)  # means 1 apart, SD 1
    assert math.isnan(cohens_d([1.0], [2.0, 3.0]))


def test_ratio_ci_equals_a_direct_bootstrap_and_agrees_with_scipy(pair):
    b, c = pair
    low, high = ratio_ci(b, c, n_boot=500, seed=3)
    # direct: the documented draw order (baseline indices, then candidate indices) from default_rng(seed)
    rng = np.random.default_rng(3)
    ib = rng.integers(0, b.size, size=(500, b.size))
    ic = rng.integers(0, c.size, size=(500, c.size))
    ratios = [np.median(c[ic[i]]) / np.median(b[ib[i]]) for i in range(500)]
    assert (low, high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])), rel=1e-12)
    # scipy's percentile bootstrap of the same two-sample statistic (independent resampling)
    ref = sps.bootstrap((b, c), lambda x, y, axis: np.median(y, axis=axis) / np.median(x, axis=axis),
                        method="percentile", n_resamples=4000, paired=False, vectorized=True,
                        random_state=np.random.default_rng(1)).confidence_interval
    low, high = ratio_ci(b, c, n_boot=4000, seed=0)
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.15 * width)
    assert high == pytest.approx(ref.high, abs=0.15 * width)
    assert low < np.median(c) / np.median(b) < high


def test_comparison_fields_and_reason(pair):
    b, c = pair
    r = compare_samples(b, c, "latency_ms")
    assert r.ratio == pytest.approx(np.median(c) / np.median(b))
    assert r.gain == pytest.approx(1 / r.ratio)  # lower is better: gain = baseline / candidate
    assert (r.gain_ci_low, r.gain_ci_high) == pytest.approx((1 / r.ratio_ci_high, 1 / r.ratio_ci_low))
    assert r.p_welch == pytest.approx(welch_p(b, c)) and r.p_mwu == pytest.approx(mannwhitney_p(b, c))
    assert r.cohens_d == pytest.approx(cohens_d(b, c))
    big = compare_samples(b, b / 1.31, "latency_ms")
    assert big.verdict == "faster" and big.outcome == "better"
    assert re.fullmatch(r"1\.31x faster, CI 1\.\d\d-1\.\d\d, p < 1e-6", big.reason), big.reason


# ---- direction and thresholds ---------------------------------------------------------------------
@pytest.mark.parametrize("name,kind,direction", [
    ("latency_ms", "time", "lower"), ("ttft_ms", "time", "lower"), ("ms_per_sequence", "time", "lower"),
    ("peak_mib", "memory", "lower"), ("kv_bytes_per_token_measured", "memory", "lower"),
    ("tokens_per_s", "throughput", "higher"), ("tflops", "throughput", "higher"), ("mfu", "throughput", "higher"),
    ("max_abs_diff", "accuracy", "lower"), ("perplexity", "other", "lower"),
])
def test_metric_direction_from_name(name, kind, direction):
    assert metric_kind(name) == (kind, direction)


def test_unknown_metric_needs_a_direction():
    with pytest.raises(ConfigError, match="pass a direction"):
        metric_kind("flops")
    assert metric_kind("flops", "higher") == ("other", "higher")


def test_throughput_higher_is_better():
    rng = np.random.default_rng(0)
    b = rng.lognormal(np.log(1000), 0.05, 30)
    up = compare_samples(b, b * 1.3, "tokens_per_s")
    assert up.verdict == "faster" and up.gain == pytest.approx(1.3)
    down = compare_samples(b, b / 1.3, "tokens_per_s")
    assert down.verdict == "slower" and down.outcome == "worse"


def test_small_real_difference_is_within_threshold():
    rng = np.random.default_rng(1)
    b = rng.lognormal(np.log(10), 0.01, 40)
    r = compare_samples(b, b / 1.05, "latency_ms")
    assert r.significant and r.verdict == "within threshold" and "below the 1.20x threshold" in r.reason
    assert compare_samples(b, b / 1.05, "latency_ms", thresholds=Thresholds(speedup=1.03)).verdict == "faster"


def test_memory_verdicts_single_values():
    assert compare_samples([1000.0], [1080.0], "peak_mib").verdict == "more memory"
    r = compare_samples([1000.0], [1030.0], "peak_mib")
    assert r.verdict == "within threshold" and r.outcome == "same" and "one value each" in r.reason
    assert compare_samples([1000.0], [900.0], "peak_mib").outcome == "better"
    assert compare_samples([1000.0], [1080.0], "peak_mib", thresholds=Thresholds(memory=0.1)).outcome == "same"


def test_accuracy_tolerance_is_dtype_aware():
    th = Thresholds(max_abs_diff_by_dtype={"bf16": 2e-2})
    assert compare_samples([0.0], [3e-6], "max_abs_diff").verdict == "within tolerance"
    assert compare_samples([0.0], [3e-3], "max_abs_diff", dtype="float32").verdict == "exceeds tolerance"
    assert compare_samples([0.0], [3e-3], "max_abs_diff", dtype="bfloat16", thresholds=th).outcome == "same"
    with pytest.raises(ConfigError, match="speedup"):
        Thresholds(speedup=0.5)


# ---- planted differences over seeded trials -------------------------------------------------------
def _trials(factor: float, n_trials: int = 200, n: int = 30, cv: float = 0.05) -> list[str]:
    rng = np.random.default_rng(2024)
    sigma = math.sqrt(math.log(1 + cv**2))  # lognormal with this coefficient of variation
    out = []
    for t in range(n_trials):
        b = rng.lognormal(np.log(10.0), sigma, n)
        c = rng.lognormal(np.log(10.0 / factor), sigma, n)
        out.append(compare_samples(b, c, "latency_ms", seed=t).verdict)
    return out


def test_planted_speedup_is_called_faster():
    verdicts = _trials(1.3)
    assert verdicts.count("faster") >= 0.95 * len(verdicts), {v: verdicts.count(v) for v in set(verdicts)}


def test_identical_distributions_are_no_significant_difference():
    # The verdict's test (Mann-Whitney p < 0.05 and a ratio CI without 1) has a false-positive rate of
    # about 3.5% here (measured over 2000 trials), so 95% is a real bound, not a formality: 1000 trials
    # keep the binomial spread (about +-0.6%) well inside the margin.
    verdicts = _trials(1.0, n_trials=1000)
    ok = verdicts.count("no significant difference")
    assert ok >= 0.95 * len(verdicts), {v: verdicts.count(v) for v in set(verdicts)}


# ---- corrections ----------------------------------------------------------------------------------
def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: times m/rank 4/1, 4/2, 4/3, 4/4 -> 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_pvalues(p, "none") == p
    assert adjust_pvalues([0.5, 0.9], "holm") == pytest.approx([1.0, 1.0])  # capped at 1
    out = adjust_pvalues([0.01, float("nan"), 0.02], "holm")  # NaN stays out of the family (m = 2)
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_bh_matches_scipy():
    p = np.random.default_rng(5).uniform(0, 0.2, size=50)
    p[:5] = [1e-5, 3e-4, 0.001, 0.002, 0.004]
    assert adjust_pvalues(p, "bh") == pytest.approx(list(sps.false_discovery_control(p, method="bh")), rel=1e-12)


def test_correct_redecides_with_adjusted_p():
    rng = np.random.default_rng(9)
    comps = [compare_samples(b := rng.lognormal(2.3, 0.05, 30), rng.lognormal(2.3, 0.05, 30), seed=i)
             for i in range(19)]
    b = rng.lognormal(2.3, 0.05, 30)
    comps.append(compare_samples(b, b * 1.4, seed=99))
    fixed = correct(comps, "holm")
    assert [c.p_adjusted for c in fixed] == pytest.approx(adjust_pvalues([c.p_mwu for c in comps], "holm"))
    assert fixed[-1].verdict == "slower" and "(Holm)" in fixed[-1].reason
    assert all(c.verdict == "no significant difference" for c in fixed[:-1])
    with pytest.raises(ConfigError):
        correct(comps, "bonferroni")


# ---- A/A noise floor ------------------------------------------------------------------------------
def test_noise_floor_halves_and_two_runs():
    x = np.random.default_rng(4).lognormal(np.log(10), 0.05, 40)
    nf = noise_floor(x, seed=2)
    low, high = ratio_ci(x[:20], x[20:], seed=2)
    assert (nf.ci_low, nf.ci_high, nf.width) == pytest.approx((low, high, high - low))
    assert nf.ratio == pytest.approx(np.median(x[20:]) / np.median(x[:20]))
    inter = noise_floor(x, split="interleaved")
    assert (inter.n_a, inter.n_b, inter.method) == (20, 20, "interleaved")
    same = noise_floor(x, x)  # a run against itself
    assert same.ratio == 1.0 and same.ci_low <= 1.0 <= same.ci_high
    with pytest.raises(ValueError):
        noise_floor([1.0, 2.0, 3.0])
