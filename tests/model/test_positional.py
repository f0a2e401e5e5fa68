"""Positional encodings against their formulas (float64 references written out here)."""

import math

import pytest
import torch

from andromeda.model.positional import (
    alibi_slopes,
    anchored_xpos,
    apply_rotary,
    head_slopes,
    rotary_inv_freq,
    rotary_tables,
    xpos_zeta,
)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_alibi_slopes_power_of_two(n):
    start = 2 ** (-8 / n)
    assert alibi_slopes(n) == pytest.approx([start ** (k + 1) for k in range(n)], rel=1e-12)


def test_alibi_slopes_not_power_of_two():
    # n = 12: the 8 slopes of 8 heads (2^-1 .. 2^-8), then every other slope of 16 heads
    # (start 2^-0.5: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5), cut to 4.
    expected = [2.0 ** -(k + 1) for k in range(8)] + [2.0 ** -(0.5 + k) for k in range(4)]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-12)
    # n = 24 (the spec's heads): 16 slopes of 16 heads + every other of 32 heads, cut to 8
    s32 = [2 ** (-8 / 32 * (k + 1)) for k in range(32)]
    s16 = [2 ** (-8 / 16 * (k + 1)) for k in range(16)]
    assert alibi_slopes(24) == pytest.approx(s16 + s32[0::2][:8], rel=1e-12)


def test_head_slopes_only_first_heads():
    s = head_slopes(24, 12)
    assert s.dtype == torch.float32 and s.shape == (24,)
    assert torch.allclose(s[:12].double(), torch.tensor(alibi_slopes(12), dtype=torch.float64), rtol=1e-6)
    assert torch.all(s[12:] == 0)
    # interpolation divides distances, i.e. slopes, by the factor
    assert torch.allclose(head_slopes(24, 12, 4.0), s / 4)


def test_inv_freq_and_zeta():
    d = 32
    i = torch.arange(d // 2, dtype=torch.float64)
    assert torch.allclose(rotary_inv_freq(d), 1 / 10000 ** (2 * i / d))
    assert torch.allclose(xpos_zeta(d), (2 * i + 0.4 * d) / (1.4 * d))


def _rotate_reference(x, pos, rot_dim, theta=10000.0, factor=1.0):
    """Float64 reference: pair (j, j + r/2) rotated by angle (pos/factor) * theta^(-2j/r)."""
    x = x.double().clone()
    out = x.clone()
    half = rot_dim // 2
    for n, p in enumerate(pos.tolist()):
        for j in range(half):
            a = (p / factor) * theta ** (-2 * j / rot_dim)
            x1, x2 = x[..., n, j], x[..., n, j + half]
            out[..., n, j] = x1 * math.cos(a) - x2 * math.sin(a)
            out[..., n, j + half] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_rotary_matches_pairwise_rotation(factor):
    x = torch.randn(2, 3, 7, 16)
    pos = torch.tensor([0, 1, 5, 9, 100, 1000, 40000])
    cos, sin = rotary_tables(pos, 8, interpolation_factor=factor)
    out = apply_rotary(x, cos, sin)
    ref = _rotate_reference(x, pos, 8, factor=factor)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.equal(out[..., 8:], x[..., 8:])  # features past rot_dim pass through


@pytest.mark.parametrize("base,first", [(512.0, 0), (2.0, 0), (2.0, 200_003)])
def test_xpos_anchored_scales_formula(base, first):
    """Each position p is scaled about its block's anchor c = (p // P) P + P // 2: queries by zeta^((p - c)/base),
    keys by the inverse; one block's step is zeta^(P / base). zeta written from the xPos paper's formula."""
    d, n = 16, 300
    xp = anchored_xpos(first, n, d, base)
    period = xp.period
    assert period == (int(base * math.log(1e30) / math.log(3.5)) // 128 * 128 if base > 100 else 64)  # 128: >= 1,024
    p = torch.arange(first, first + n, dtype=torch.float64)
    c = torch.div(p, period, rounding_mode="floor") * period + period // 2
    i = torch.arange(d // 2, dtype=torch.float64)
    zeta = (2 * i + 0.4 * d) / (1.4 * d)
    ref = zeta[None, :] ** ((p[:, None] - c[:, None]) / base)
    for half in (slice(0, d // 2), slice(d // 2, d)):
        assert torch.allclose(xp.scale[:, half].double(), ref, rtol=1e-6)
        assert torch.allclose(xp.inv[:, half].double(), 1 / ref, rtol=1e-6)
    assert torch.allclose(xp.step(3)[: d // 2].double(), zeta ** (3 * period / base), rtol=1e-6)
    edges = [(a, b) for a, b, _ in xp.blocks()]
    assert edges[0][0] == 0 and edges[-1][1] == n
    assert all(b == a2 for (_, b), (a2, _) in zip(edges, edges[1:], strict=False))
    assert all((first + a) // period == blk == (first + b - 1) // period for a, b, blk in xp.blocks())


@pytest.mark.parametrize("first", [0, 200_000])
def test_xpos_pair_products_are_zeta_to_the_distance(first):
    """For j <= i in any blocks, q scale_i x (block step)^(b_i - b_j) x k inv_j = zeta^((i - j)/base), finite."""
    d, base, n = 16, 2.0, 400
    xp = anchored_xpos(first, n, d, base)
    i = torch.arange(d // 2, dtype=torch.float64)
    zeta = (2 * i + 0.4 * d) / (1.4 * d)
    for qi, kj in [(399, 0), (399, 398), (250, 10), (130, 129), (64 * 3 - first % 64, 5)]:
        blk = (first + qi) // xp.period
        fac = xp.rebase(first + kj, 1, blk)
        fac = torch.ones(d) if fac is None else fac[0]
        got = xp.scale[qi].double() * fac.double() * xp.inv[kj].double()
        want = zeta ** ((qi - kj) / base)
        assert torch.isfinite(xp.scale[qi]).all() and torch.isfinite(xp.inv[kj]).all()
        assert torch.allclose(got[: d // 2], want, rtol=1e-5, atol=1e-30), (qi, kj)


@pytest.mark.parametrize("xpos", [False, True])
def test_logits_depend_only_on_relative_position(xpos):
    """q.k after rotary (and xPos: q scaled, k inverse-scaled about their anchors, the block step between)
    depends on i - j only, across anchor blocks (scale base 2: blocks of 64 positions)."""
    d = 16
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def logit(i, j):
        pos = torch.tensor([i, j])
        cos, sin = rotary_tables(pos, d)
        sc = fac = None
        if xpos:
            xi, xj = anchored_xpos(i, 1, d, 2.0), anchored_xpos(j, 1, d, 2.0)
            sc = (xi.scale, xj.inv)
            fac = xi.rebase(j, 1, i // xi.period)
        qr = apply_rotary(q[None].float(), cos[:1], sin[:1], None if sc is None else sc[0])
        kr = apply_rotary(k[None].float(), cos[1:], sin[1:], None if sc is None else sc[1])
        if fac is not None:
            kr = kr * fac
        return float((qr.double() * kr.double()).sum())

    for delta in [0, 1, 7, 50]:
        vals = [logit(j + delta, j) for j in [0, 13, 200, 511]]
        assert vals == pytest.approx([vals[0]] * len(vals), rel=2e-4, abs=2e-5)
    if xpos:  # xPos decays: the same pair of vectors scores lower in magnitude far apart
        qa = torch.ones(d, dtype=torch.float64)
        q, k = qa, qa
        assert abs(logit(400, 0)) < abs(logit(0, 0))
