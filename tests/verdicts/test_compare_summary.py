"""The per-candidate summary of a comparison of models: geometric mean of the per-case gains with a CI, and
the framing (faster / slower; never FAIL or 'regressions' unless it is a gate)."""

import math

import numpy as np
import pytest

from andromeda.verdicts.comparison import compare_samples
from andromeda.verdicts.run_comparison import RunComparison
from andromeda.verdicts.summary import by_candidate, geometric_mean_gain


def test_one_case_keeps_its_own_ratio_and_ci():
    g, lo, hi = geometric_mean_gain([1.5], [1.2], [1.875])  # log-symmetric: 1.5 / 1.25 and 1.5 * 1.25
    assert g == pytest.approx(1.5) and lo == pytest.approx(1.2) and hi == pytest.approx(1.875)


def test_n_equal_cases_narrow_the_ci_by_sqrt_n():
    # n independent cases each 2x with a CI of 2 / 1.5 .. 2 * 1.5: the mean's log CI is ln(1.5) / sqrt(n) wide
    n = 9
    g, lo, hi = geometric_mean_gain([2.0] * n, [2 / 1.5] * n, [3.0] * n)
    assert g == pytest.approx(2.0)
    assert math.log(hi / g) == pytest.approx(math.log(1.5) / math.sqrt(n))
    assert math.log(g / lo) == pytest.approx(math.log(1.5) / math.sqrt(n))


def test_geometric_mean_of_different_gains():
    g, lo, hi = geometric_mean_gain([2.0, 0.5, 4.0], [1.9, 0.45, 3.5], [2.1, 0.55, 4.5])
    assert g == pytest.approx((2.0 * 0.5 * 4.0) ** (1 / 3)) and lo < g < hi


def test_a_case_without_ci_leaves_the_summary_without_one():
    g, lo, hi = geometric_mean_gain([2.0, 3.0], [1.9, math.nan], [2.1, math.nan])
    assert g == pytest.approx(math.sqrt(6)) and math.isnan(lo) and math.isnan(hi)


def _comparisons(factor_by_candidate, cases=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for cand, factor in factor_by_candidate.items():
        for i in range(cases):
            base = rng.lognormal(np.log(10.0 * (i + 1)), 0.02, 25)
            out.append(compare_samples(base, base * factor, "latency_ms", label=f"case {i}", baseline_label="base",
                                       candidate_label=cand))
    return out


def test_by_candidate_words_and_factors():
    comps = _comparisons({"fast": 0.5, "slow": 1.6})
    fast, slow = by_candidate(comps)
    assert (fast.candidate, fast.n, fast.words()[0]) == ("fast", 3, "faster")
    assert fast.words()[1] == pytest.approx(2.0, rel=1e-9)  # every case exactly 2x faster: times halved
    assert slow.words()[0] == "slower" and slow.words()[1] == pytest.approx(1.6, rel=1e-9)
    assert slow.headline().startswith("1.60x slower (95% CI 1.")
    assert fast.outcomes == {"faster": 3} and slow.outcomes == {"slower": 3}


def test_models_are_framed_as_models_and_a_gate_as_a_gate():
    comps = _comparisons({"slow": 1.6})
    models = RunComparison(old="run", new="slow", metrics=["latency_ms"], comparisons=comps,
                           baseline_source="base", gate=False)
    text = "\n".join(models.summary_lines())
    assert models.exit_code == 0 and models.kind == "models"
    assert "FAIL" not in text and "PASS" not in text and "regression" not in text
    assert "slower: 3" in text and models.summary_lines()[-1].startswith("verdict vs base: slow 1.60x slower")
    gate = RunComparison(old="run", new="slow", metrics=["latency_ms"], comparisons=comps,
                         baseline_source="base", gate=True)
    assert gate.exit_code == 1 and gate.summary_lines()[-1].startswith("result: FAIL")
    runs = RunComparison(old="a", new="b", metrics=["latency_ms"], comparisons=comps)
    assert runs.kind == "gate" and "regressions: 3" in runs.summary_lines()
