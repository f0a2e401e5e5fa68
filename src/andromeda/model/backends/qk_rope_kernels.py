"""Triton kernels of the fused QK-norm + partial rotary + xPos op (their launches and the custom ops wrapping them
are in qk_rope.py).

Imported only when the op first runs, so the package imports without Triton. One program takes BLOCK_N rows
(positions) of one (batch, head), all arithmetic in float32, rounded once at the store. A row's D features are
handled as three contiguous pieces: the rotary halves a = [0, R/2) and b = [R/2, R), each the other's partner
(rotate_half: out_a = (y_a cos_a - y_b sin_a) scale_a, out_b = (y_b cos_b + y_a sin_b) scale_b), and the rest
[R, D), which passes. So every load and store is of contiguous columns (vectorized), and x is read once. A piece's
width W is padded to a power of two WP, the padding masked (x 0, cos 1, sin 0, scale 1; never stored).
"""

import triton
import triton.language as tl


@triton.jit
def _cols(c0, W: tl.constexpr, WP: tl.constexpr):
    """Columns c0 .. c0 + WP and the mask of the first W."""
    j = tl.arange(0, WP)
    return c0 + j, j < W


@triton.jit
def _load(P, row, s_d, live, c0, W: tl.constexpr, WP: tl.constexpr, other):
    """Columns c0 .. c0 + W of the rows at offsets `row` (BLOCK_N,) as a float32 (BLOCK_N, WP) tile."""
    cols, ok = _cols(c0, W, WP)
    m = live[:, None]
    if WP != W:
        m = m & ok[None, :]
    return tl.load(P + row[:, None] + cols[None, :] * s_d, mask=m, other=other).to(tl.float32)


@triton.jit
def _store(P, row, live, c0, v, W: tl.constexpr, WP: tl.constexpr):
    """v (BLOCK_N, WP) into columns c0 .. c0 + W (unit stride) of the rows at offsets `row`."""
    cols, ok = _cols(c0, W, WP)
    m = live[:, None]
    if WP != W:
        m = m & ok[None, :]
    tl.store(P + row[:, None] + cols[None, :], v.to(P.dtype.element_ty), mask=m)


@triton.jit
def _gain(G, h, s_h, s_d, c0, W: tl.constexpr, WP: tl.constexpr, HAS_GAIN: tl.constexpr):
    """Head h's gains of columns c0 .. c0 + W as (1, WP) float32 (ones without gains)."""
    cols, ok = _cols(c0, W, WP)
    if HAS_GAIN:
        g = tl.load(G + h * s_h + cols * s_d, mask=ok, other=1.0).to(tl.float32)
    else:
        g = tl.full((WP,), 1.0, tl.float32)
    return g[None, :]


@triton.jit
def _sq(t):
    return tl.sum(t * t, axis=1)


@triton.jit
def _rows(H, N, BLOCK_N: tl.constexpr):
    """(batch (int64), head, rows, rows in range, rows as int64) of this program."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return (bh // H).to(tl.int64), bh % H, rows, rows < N, rows.to(tl.int64)


@triton.jit
def _row_pieces(X, xrow, s_d, live, R: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, RP: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """x's rows as the float32 tiles of its pieces (rotary halves a, b; the rest), zeros for a piece of no width,
    and each row's sum of squares."""
    HALF: tl.constexpr = R // 2
    REST: tl.constexpr = D - R
    a = tl.zeros((BLOCK_N, HP), tl.float32)
    b = tl.zeros((BLOCK_N, HP), tl.float32)
    r = tl.zeros((BLOCK_N, RP), tl.float32)
    ss = tl.zeros((BLOCK_N,), tl.float32)
    if R > 0:
        a = _load(X, xrow, s_d, live, 0, HALF, HP, 0.0)
        b = _load(X, xrow, s_d, live, HALF, HALF, HP, 0.0)
        ss += _sq(a) + _sq(b)
    if REST > 0:
        r = _load(X, xrow, s_d, live, R, REST, RP, 0.0)
        ss += _sq(r)
    return a, b, r, ss


@triton.jit
def qk_rope_fwd(X, G, COS, SIN, SC, OUT, NORMS,
                N, H, sx_b, sx_n, sx_h, sx_d, sg_h, sg_d, sc_n, sc_d, ss_n, ss_d, sk_n, sk_d, eps,
                D: tl.constexpr, R: tl.constexpr, HP: tl.constexpr, RP: tl.constexpr, BLOCK_N: tl.constexpr,
                NORM: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_SCALE: tl.constexpr, WANT_NORMS: tl.constexpr):
    """out[b, h, rows] = rotary(x[b, rows, h] / n * gain[h]) * scale; norms[b, h, rows] = |x / n * gain[h]|.
    HP, RP: R/2 and D - R rounded up to powers of two."""
    b, h, rows, live, r64 = _rows(H, N, BLOCK_N)
    HALF: tl.constexpr = R // 2
    REST: tl.constexpr = D - R
    ya, yb, yr, ss = _row_pieces(X, b * sx_b + h * sx_h + r64 * sx_n, sx_d, live, R, D, HP, RP, BLOCK_N)
    inv = tl.full((BLOCK_N,), 1.0, tl.float32)
    if NORM:
        inv = 1.0 / tl.maximum(tl.sqrt_rn(ss), eps)
    yy = tl.zeros((BLOCK_N,), tl.float32)
    orow = (b * H + h) * N * D + r64 * D  # out is (B, H, N, D) contiguous
    if R > 0:
        ya = ya * inv[:, None] * _gain(G, h, sg_h, sg_d, 0, HALF, HP, HAS_GAIN)
        yb = yb * inv[:, None] * _gain(G, h, sg_h, sg_d, HALF, HALF, HP, HAS_GAIN)
        yy += _sq(ya) + _sq(yb)
        crow, srow = r64 * sc_n, r64 * ss_n
        oa = ya * _load(COS, crow, sc_d, live, 0, HALF, HP, 1.0) - yb * _load(SIN, srow, ss_d, live, 0, HALF, HP, 0.0)
        ob = yb * _load(COS, crow, sc_d, live, HALF, HALF, HP, 1.0) + ya * _load(SIN, srow, ss_d, live, HALF, HALF,
                                                                                 HP, 0.0)
        if HAS_SCALE:
            oa = oa * _load(SC, r64 * sk_n, sk_d, live, 0, HALF, HP, 1.0)
            ob = ob * _load(SC, r64 * sk_n, sk_d, live, HALF, HALF, HP, 1.0)
        _store(OUT, orow, live, 0, oa, HALF, HP)
        _store(OUT, orow, live, HALF, ob, HALF, HP)
    if REST > 0:
        yr = yr * inv[:, None] * _gain(G, h, sg_h, sg_d, R, REST, RP, HAS_GAIN)
        yy += _sq(yr)
        _store(OUT, orow, live, R, yr, REST, RP)
    if WANT_NORMS:
        tl.store(NORMS + (b * H + h) * N + r64, tl.sqrt_rn(yy), mask=live)


@triton.jit
def _dgain(DG, base, c0, dy, xhat, W: tl.constexpr, WP: tl.constexpr):
    """This program's share of dgain over columns c0 .. c0 + W: sum over its rows of dy * xhat."""
    cols, ok = _cols(c0, W, WP)
    tl.store(DG + base + cols, tl.sum(dy * xhat, axis=0), mask=ok)


@triton.jit
def _dx(dxhat, xhat, dot, n, big, NORM: tl.constexpr):
    """dx of F.normalize: (dxhat - xhat (xhat . dxhat)) / n above eps; dxhat / eps below (the clamp)."""
    if NORM:
        dxhat = tl.where(big[:, None], dxhat - xhat * dot[:, None], dxhat) / n[:, None]
    return dxhat


@triton.jit
def qk_rope_bwd(DO, X, G, COS, SIN, SC, DX, DG,
                N, H, NB, so_b, so_h, so_n, so_d, sx_b, sx_n, sx_h, sx_d, sg_h, sg_d, sc_n, sc_d, ss_n, ss_d,
                sk_n, sk_d, eps,
                D: tl.constexpr, R: tl.constexpr, HP: tl.constexpr, RP: tl.constexpr, BLOCK_N: tl.constexpr,
                NORM: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_SCALE: tl.constexpr):
    """dx[b, rows, h] (a contiguous (B, N, H, D) tensor) from dout[b, h, rows]: with gs = dout * scale,
    dy_a = gs_a cos_a + gs_b sin_b, dy_b = gs_b cos_b - gs_a sin_a, dy = dout beyond R; dxhat = dy * gain. With
    gains, this program's share of dgain[h] (sum over its rows of dy * xhat) into DG[b, program, h] (NB programs
    along N)."""
    b, h, rows, live, r64 = _rows(H, N, BLOCK_N)
    HALF: tl.constexpr = R // 2
    REST: tl.constexpr = D - R
    grow = b * so_b + h * so_h + r64 * so_n
    xa, xb, xr, ss = _row_pieces(X, b * sx_b + h * sx_h + r64 * sx_n, sx_d, live, R, D, HP, RP, BLOCK_N)
    length = tl.sqrt_rn(ss)
    n = tl.maximum(length, eps)
    big = length > eps
    inv = tl.full((BLOCK_N,), 1.0, tl.float32)
    if NORM:
        inv = 1.0 / n
    dot = tl.zeros((BLOCK_N,), tl.float32)
    dgrow = ((b * NB + tl.program_id(0)) * H + h) * D
    if R > 0:
        xa, xb = xa * inv[:, None], xb * inv[:, None]
        ga = _load(DO, grow, so_d, live, 0, HALF, HP, 0.0)
        gb = _load(DO, grow, so_d, live, HALF, HALF, HP, 0.0)
        if HAS_SCALE:
            ga = ga * _load(SC, r64 * sk_n, sk_d, live, 0, HALF, HP, 1.0)
            gb = gb * _load(SC, r64 * sk_n, sk_d, live, HALF, HALF, HP, 1.0)
        crow, srow = r64 * sc_n, r64 * ss_n
        dya = ga * _load(COS, crow, sc_d, live, 0, HALF, HP, 1.0) + gb * _load(SIN, srow, ss_d, live, HALF, HALF,
                                                                               HP, 0.0)
        dyb = gb * _load(COS, crow, sc_d, live, HALF, HALF, HP, 1.0) - ga * _load(SIN, srow, ss_d, live, 0, HALF,
                                                                                  HP, 0.0)
        if HAS_GAIN:
            _dgain(DG, dgrow, 0, dya, xa, HALF, HP)
            _dgain(DG, dgrow, HALF, dyb, xb, HALF, HP)
        dya = dya * _gain(G, h, sg_h, sg_d, 0, HALF, HP, HAS_GAIN)
        dyb = dyb * _gain(G, h, sg_h, sg_d, HALF, HALF, HP, HAS_GAIN)
        dot += tl.sum(xa * dya, axis=1) + tl.sum(xb * dyb, axis=1)
    if REST > 0:
        xr = xr * inv[:, None]
        dyr = _load(DO, grow, so_d, live, R, REST, RP, 0.0)
        if HAS_GAIN:
            _dgain(DG, dgrow, R, dyr, xr, REST, RP)
        dyr = dyr * _gain(G, h, sg_h, sg_d, R, REST, RP, HAS_GAIN)
        dot += tl.sum(xr * dyr, axis=1)
    xrow_out = ((b * N + r64) * H + h) * D  # dx is (B, N, H, D) contiguous
    if R > 0:
        _store(DX, xrow_out, live, 0, _dx(dya, xa, dot, n, big, NORM), HALF, HP)
        _store(DX, xrow_out, live, HALF, _dx(dyb, xb, dot, n, big, NORM), HALF, HP)
    if REST > 0:
        _store(DX, xrow_out, live, R, _dx(dyr, xr, dot, n, big, NORM), REST, RP)
