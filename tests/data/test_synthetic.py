"""The synthetic Markov source: its entropy rate against closed forms and against its own samples."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from andromeda.data import MarkovSource, entropy_rate, stationary_distribution
from andromeda.errors import ConfigError


def _h2(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize("a,b", [(0.1, 0.3), (0.5, 0.5), (0.9, 0.05)])
def test_two_state_chain_closed_form(a, b):
    # P = [[1-a, a], [b, 1-b]]: pi = (b, a) / (a + b), H = pi_0 h(a) + pi_1 h(b)
    P = np.array([[1 - a, a], [b, 1 - b]])
    pi = stationary_distribution(P)
    assert pi == pytest.approx([b / (a + b), a / (a + b)], abs=1e-12)
    assert entropy_rate(P, pi) == pytest.approx(b / (a + b) * _h2(a) + a / (a + b) * _h2(b), abs=1e-12)


@pytest.mark.parametrize("n,k", [(8, 1), (32, 4), (64, 8), (16, 16)])
def test_source_structure_and_exact_entropy(n, k):
    src = MarkovSource(n_symbols=n, successors=k, seed=3)
    P, pi = src.transition, src.stationary
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert ((P > 0).sum(axis=1) == k).all()
    assert np.allclose(pi @ P, pi, atol=1e-12) and pi.min() > 0
    # irreducible, and aperiodic when k >= 2: some power of P is strictly positive (Wielandt: (n-1)^2 + 1)
    if k >= 2:
        A = (P > 0).astype(np.int64)
        M = A.copy()
        for _ in range((n - 1) ** 2):
            M = ((M @ A) > 0).astype(np.int64)
        assert M.all()
    h = sum(pi[i] * scipy_entropy(P[i]) for i in range(n))  # scipy: natural log
    assert src.entropy_rate_nats == pytest.approx(h, rel=1e-12)
    assert src.bits_per_byte == pytest.approx(h / math.log(2), rel=1e-12)
    assert src.floor_perplexity == pytest.approx(math.exp(h), rel=1e-12)
    if k == 1:
        assert src.entropy_rate_nats == pytest.approx(0.0, abs=1e-12)  # a deterministic cycle


def test_samples_follow_the_chain():
    src = MarkovSource(n_symbols=32, successors=4, seed=1)
    x = src.sample(200_000, seed=7).astype(np.int64)
    nll = src.nll_nats(x)
    assert np.isfinite(nll).all()  # every transition has positive probability
    sem = nll.std() / math.sqrt(len(nll))
    assert abs(nll.mean() - src.entropy_rate_nats) < 5 * sem + 1e-3  # law of large numbers
    counts = np.bincount(x, minlength=32) / len(x)
    assert np.abs(counts - src.stationary).max() < 0.01
    b = src.sample_batch(64, 2048, seed=2)
    assert b.shape == (64, 2048) and b.dtype == np.int64
    nll_b = np.concatenate([src.nll_nats(r) for r in b])
    assert np.isfinite(nll_b).all()
    assert abs(nll_b.mean() - src.entropy_rate_nats) < 5 * nll_b.std() / math.sqrt(len(nll_b)) + 1e-3


def test_deterministic_and_offset():
    a = MarkovSource(n_symbols=16, successors=3, seed=5, offset=97)
    assert np.array_equal(a.sample(500, seed=1), a.sample(500, seed=1))
    assert not np.array_equal(a.sample(500, seed=1), a.sample(500, seed=2))
    assert np.array_equal(a.sample_batch(4, 50, seed=3), a.sample_batch(4, 50, seed=3))
    x = a.sample_batch(4, 100, seed=0)
    assert x.min() >= 97 and x.max() < 97 + 16
    assert a.text(10).decode("ascii").isalpha()  # 97.. = 'a'..'p'


@pytest.mark.parametrize("kw", [dict(n_symbols=1), dict(n_symbols=8, successors=9), dict(alpha=0.0),
                                dict(n_symbols=64, offset=200)])
def test_bad_parameters(kw):
    with pytest.raises(ConfigError):
        MarkovSource(**kw)
