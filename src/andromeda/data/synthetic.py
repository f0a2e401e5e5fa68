"""A synthetic corpus whose entropy rate is known exactly: a seeded first-order Markov chain.

The chain has `n_symbols` states; state i moves to one of `successors` states with probabilities
drawn from a symmetric Dirichlet(`alpha`). The successors of i always include i+1 (mod n), so
the chain is irreducible, and state 0 includes itself when successors >= 2, so it is aperiodic:
it has one stationary distribution pi, and sequences started from pi are stationary. Its entropy rate is

    H = -sum_i pi_i sum_j P_ij log P_ij        (nats per symbol)

computed in float64 from the exact transition matrix. Symbol s is written as token (byte)
`offset + s`, one byte per token, so H nats/token is H / ln 2 bits per byte. No model can beat
perplexity exp(H) on this data in expectation: it is the floor a trained model approaches.

Predicting token t needs only token t-1, so every scored position of a window (all but the
first, which has no context) has the same floor H.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from andromeda.errors import ConfigError


@dataclass(frozen=True)
class MarkovSource:
    """A first-order Markov chain over `n_symbols` byte values, built from `seed`."""

    n_symbols: int = 32
    successors: int = 6
    alpha: float = 1.0  # Dirichlet concentration of each row's probabilities (1 = uniform on the simplex)
    seed: int = 0
    offset: int = 0  # token of symbol s is offset + s; offset + n_symbols <= 256 keeps tokens bytes
    transition: np.ndarray = field(init=False, repr=False, compare=False)  # (n, n) float64
    stationary: np.ndarray = field(init=False, repr=False, compare=False)  # (n,) float64

    def __post_init__(self) -> None:
        n, k = self.n_symbols, self.successors
        if n < 2:
            raise ConfigError(f"synthetic.n_symbols: must be >= 2, got {n}")
        if not 1 <= k <= n:
            raise ConfigError(f"synthetic.successors: must be between 1 and n_symbols ({n}), got {k}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"synthetic.alpha: must be a finite number > 0, got {self.alpha}")
        if not 0 <= self.offset or self.offset + n > 256:
            raise ConfigError(f"synthetic.offset: offset + n_symbols must be <= 256 (bytes), got {self.offset + n}")
        rng = np.random.default_rng([self.seed, n, k])
        P = np.zeros((n, n), dtype=np.float64)
        for i in range(n):
            forced = [(i + 1) % n] + ([0] if i == 0 and n > 1 else [])
            forced = list(dict.fromkeys(forced))[:k]
            others = [j for j in range(n) if j not in forced]
            extra = rng.choice(others, size=k - len(forced), replace=False) if k > len(forced) else []
            cols = np.array(forced + list(extra), dtype=np.int64)
            P[i, cols] = rng.dirichlet(np.full(len(cols), self.alpha))
        object.__setattr__(self, "transition", P)
        object.__setattr__(self, "stationary", stationary_distribution(P))

    # ---- exact quantities ------------------------------------------------------------------
    @property
    def entropy_rate_nats(self) -> float:
        """H = -sum_i pi_i sum_j P_ij ln P_ij, nats per token."""
        return entropy_rate(self.transition, self.stationary)

    @property
    def entropy_rate_bits(self) -> float:
        """Bits per token, which is bits per byte: one token is one UTF-8 byte."""
        return self.entropy_rate_nats / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.entropy_rate_bits

    @property
    def floor_perplexity(self) -> float:
        """exp(H): the lowest expected per-token perplexity any model can reach on this source."""
        return math.exp(self.entropy_rate_nats)

    def facts(self) -> dict[str, float]:
        return {"entropy_nats": self.entropy_rate_nats, "entropy_bits_per_byte": self.bits_per_byte,
                "floor_ppl": self.floor_perplexity}

    # ---- sampling ---------------------------------------------------------------------------
    def sample(self, n_tokens: int, seed: int = 0, dtype=np.uint16) -> np.ndarray:
        """One chain of n_tokens tokens (offset + symbol), started from the stationary distribution."""
        if n_tokens < 0:
            raise ConfigError(f"synthetic: n_tokens must be >= 0, got {n_tokens}")
        rng = np.random.default_rng([self.seed, seed, 1])
        cdf = [_cdf(row) for row in self.transition]  # per-state inverse-CDF tables
        u = rng.random(n_tokens).tolist()
        out = np.empty(n_tokens, dtype=np.int64)
        if n_tokens:
            s = bisect.bisect_right(_cdf(self.stationary), u[0])
            out[0] = s
            for t in range(1, n_tokens):  # plain Python: ~3M tokens/s, no per-call numpy overhead
                s = bisect.bisect_right(cdf[s], u[t])
                out[t] = s
        return (out + self.offset).astype(dtype)

    def sample_batch(self, batch: int, length: int, seed: int = 0) -> np.ndarray:
        """(batch, length) int64 tokens: `batch` independent chains, each started from pi.

        Deterministic in (source seed, seed); all chains step together, so a batch costs
        `length` vectorized steps.
        """
        if batch < 0 or length < 0:
            raise ConfigError(f"synthetic: batch and length must be >= 0, got {batch}, {length}")
        rng = np.random.default_rng([self.seed, seed, 2])
        u = rng.random((batch, length))  # (B, L)
        out = np.empty((batch, length), dtype=np.int64)
        if length:
            cdf = np.cumsum(self.transition, axis=1)  # (n, n)
            cdf[:, -1] = 1.0
            s = np.searchsorted(_cdf(self.stationary), u[:, 0], side="right")  # (B,)
            out[:, 0] = s
            for t in range(1, length):
                s = (cdf[s] <= u[:, t : t + 1]).sum(axis=1)  # inverse CDF of each chain's row
                out[:, t] = s
        return out + self.offset

    def text(self, n_tokens: int, seed: int = 0) -> bytes:
        return self.sample(n_tokens, seed).astype(np.uint8).tobytes()

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        """-ln P(x_t | x_{t-1}) for t >= 1: the true model's per-token loss (for checks)."""
        s = np.asarray(tokens, dtype=np.int64) - self.offset
        return -np.log(self.transition[s[:-1], s[1:]])


def _cdf(p: np.ndarray) -> list[float]:
    c = np.cumsum(p)
    c[-1] = 1.0  # guard against round-off: u < 1 always lands on a state
    return c.tolist()


def stationary_distribution(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum(pi) = 1, for an irreducible stochastic matrix (float64 linear solve)."""
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    A = np.vstack([P.T - np.eye(n), np.ones((1, n))])  # (n + 1, n)
    b = np.zeros(n + 1)
    b[-1] = 1.0
    pi, *_ = np.linalg.lstsq(A, b, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def entropy_rate(P: np.ndarray, pi: np.ndarray) -> float:
    """-sum_i pi_i sum_j P_ij ln P_ij (0 ln 0 = 0), nats."""
    P = np.asarray(P, dtype=np.float64)
    logs = np.zeros_like(P)
    np.log(P, out=logs, where=P > 0)
    return float(-(np.asarray(pi) * (P * logs).sum(axis=1)).sum())


__all__ = ["MarkovSource", "stationary_distribution", "entropy_rate"]
