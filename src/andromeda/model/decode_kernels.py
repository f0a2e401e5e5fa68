"""Triton kernels of the fused batch-1 decode step (launched by model/fused_decode.py).

One token, so every matmul is a matrix-vector product that streams its weight once: the step is
bound by memory bandwidth, and what costs time past the weight bytes is the number of kernels and the
gaps between them. These kernels keep each layer to nine launches:

    norm_shift -> gemv(q|k|v) -> qk_rope_cache -> attn_split -> attn_combine -> gemv(out, +x)
    norm_shift -> gemv(w_in, act) [-> gemv(w_gate, x act)] -> gemv(w_out, +x)

Arithmetic is float32; every value the torch step materializes in the model's dtype (a norm's
output, a projection, an activation, a residual sum) is rounded to that dtype at the same place, so
the fused step and the torch step (model/decode.py) agree to a few units in the last place.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = 1.4426950408889634


@triton.jit
def _rnd(x, like):
    """x rounded to the element type of pointer `like`, back in float32."""
    return x.to(like.dtype.element_ty).to(tl.float32)


@triton.jit
def norm_shift_kernel(X, W, B, OUT, STATE, dim, chunk, eps,
                      RMS: tl.constexpr, HAS_B: tl.constexpr, SHIFTS: tl.constexpr, BLOCK: tl.constexpr):
    """OUT = token_shift(norm(X)) for one row of `dim` features (one program).

    LayerNorm (RMS=False) or RMSNorm over X; then, with SHIFTS = s > 0, feature chunk k (1 <= k <= s,
    `chunk` features each) comes from the normalized row k positions back, held in STATE (s, dim) oldest
    first, and STATE moves up one row with this position's normalized row last.
    """
    offs = tl.arange(0, BLOCK)
    m = offs < dim
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(W + offs, mask=m, other=0.0).to(tl.float32)
    if RMS:
        y = x * tl.rsqrt(tl.sum(x * x, axis=0) / dim + eps) * w
    else:
        xc = tl.where(m, x - tl.sum(x, axis=0) / dim, 0.0)
        y = xc * tl.rsqrt(tl.sum(xc * xc, axis=0) / dim + eps) * w
    if HAS_B:
        y += tl.load(B + offs, mask=m, other=0.0).to(tl.float32)
    y = y.to(OUT.dtype.element_ty)
    out = y
    for k in tl.static_range(1, SHIFTS + 1):
        prev = tl.load(STATE + (SHIFTS - k) * dim + offs, mask=m, other=0.0)
        out = tl.where((offs >= k * chunk) & (offs < (k + 1) * chunk), prev, out)
    tl.store(OUT + offs, out, mask=m)
    if SHIFTS > 0:
        tl.debug_barrier()  # every read of STATE above happens before it is overwritten
        for j in tl.static_range(0, SHIFTS - 1):
            tl.store(STATE + j * dim + offs, tl.load(STATE + (j + 1) * dim + offs, mask=m), mask=m)
        tl.store(STATE + (SHIFTS - 1) * dim + offs, y, mask=m)


@triton.jit
def gemv_kernel(X, OUT, W0, W1, W2, B0, B1, B2, RES, MUL,
                N0, N1, N2, SW0, SW1, SW2, K: tl.constexpr,
                SEGMENTS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                HAS_MUL: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """OUT[r] = epilogue(sum_k W[r, k] X[k]) over the rows of up to three weights stacked (q | k | v).

    Program p takes BLOCK_N rows of one weight (the weights' blocks follow one another); OUT holds the
    weights' outputs one after another. Epilogue, each step rounded to OUT's dtype as torch would:
    + bias, ACT (0 none, 1 gelu (erf), 2 silu, 3 relu), x MUL[r] (a GLU gate), + RES[r] (the residual;
    RES may be OUT itself: a program reads only the rows it writes).
    """
    pid = tl.program_id(0)
    w, b, n, sw, base, blk = W0, B0, N0, SW0, pid * 0, pid
    if SEGMENTS > 1:
        nb0 = tl.cdiv(N0, BLOCK_N)
        if pid >= nb0:
            w, b, n, sw, base, blk = W1, B1, N1, SW1, base + N0, pid - nb0
            if SEGMENTS > 2:
                nb1 = tl.cdiv(N1, BLOCK_N)
                if pid >= nb0 + nb1:
                    w, b, n, sw, base, blk = W2, B2, N2, SW2, base + N1, pid - nb0 - nb1
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = tl.minimum(rows, n - 1)  # past-the-end rows re-read the last row; their results are not stored
    cols = tl.arange(0, BLOCK_K)
    wp = w + rows_in[:, None].to(tl.int64) * sw + cols[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            xk = tl.load(X + k0 + cols)
            wk = tl.load(wp + k0, eviction_policy="evict_first")
        else:
            km = k0 + cols < K
            xk = tl.load(X + k0 + cols, mask=km, other=0.0)
            wk = tl.load(wp + k0, mask=km[None, :], other=0.0, eviction_policy="evict_first")
        acc += wk.to(tl.float32) * xk.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b + rows_in).to(tl.float32)
    y = _rnd(y, OUT)
    if ACT == 1:
        y = _rnd(0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476)), OUT)
    elif ACT == 2:
        y = _rnd(y / (1.0 + tl.exp(-y)), OUT)
    elif ACT == 3:
        y = tl.maximum(y, 0.0)
    if HAS_MUL:
        y = _rnd(y * tl.load(MUL + base + rows_in).to(tl.float32), OUT)
    if HAS_RES:
        y += tl.load(RES + base + rows_in).to(tl.float32)
    tl.store(OUT + base + rows, y.to(OUT.dtype.element_ty), mask=rows < n)


@triton.jit
def qk_rope_cache_kernel(QKV, QOUT, KC, VC, POS, GQ, GK, COS, SIN, XS, H, HKV, kv_stride, eps,
                         D: tl.constexpr, ROT: tl.constexpr, QK_NORM: tl.constexpr, GAIN: tl.constexpr,
                         XPOS: tl.constexpr):
    """QK-norm (x / max(|x|, eps), x gain) and rotary/xPos of this position's query and key heads.

    Program h < H: query head h -> QOUT[h]. Program H + j: key head j -> the cache KC[j, pos], and value
    head j -> VC[j, pos] (KC, VC: one layer's (H_kv, T, D) buffers, `kv_stride` = T * D). QKV holds the
    H query heads, then the H_kv key heads, then the H_kv value heads. Rotary turns the first ROT features
    with the tables' row `pos` (ROT = 0: none); xPos multiplies queries by the scale, keys by its inverse.
    """
    h = tl.program_id(0)
    pos = tl.load(POS)
    is_q = h < H
    is_k = h >= H
    d = tl.arange(0, D)
    x = tl.load(QKV + h * D + d).to(tl.float32)
    half: tl.constexpr = ROT // 2
    dp = tl.where(d < half, d + half, d - half)  # the rotation partner of feature d (d < ROT)
    xp = tl.load(QKV + h * D + dp, mask=d < ROT, other=0.0).to(tl.float32)
    if QK_NORM:
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), eps)
        x, xp = _rnd(x * inv, QOUT), _rnd(xp * inv, QOUT)
        if GAIN:
            kv_row = (h - H) * D
            g = tl.where(is_q, tl.load(GQ + h * D + d, mask=is_q, other=0.0),
                         tl.load(GK + kv_row + d, mask=is_k, other=0.0)).to(tl.float32)
            gp = tl.where(is_q, tl.load(GQ + h * D + dp, mask=is_q & (d < ROT), other=0.0),
                          tl.load(GK + kv_row + dp, mask=is_k & (d < ROT), other=0.0)).to(tl.float32)
            x, xp = _rnd(x * g, QOUT), _rnd(xp * gp, QOUT)
    y = x
    if ROT > 0:
        r = d < ROT
        c = tl.load(COS + pos * ROT + d, mask=r, other=1.0)
        s = tl.load(SIN + pos * ROT + d, mask=r, other=0.0)
        rot = x * c + tl.where(d < half, -xp, xp) * s
        if XPOS:
            sc = tl.load(XS + pos * ROT + d, mask=r, other=1.0)
            rot = rot * tl.where(is_q, sc, 1.0 / sc)
        y = tl.where(r, rot, x)
    if is_q:
        tl.store(QOUT + h * D + d, y.to(QOUT.dtype.element_ty))
    else:
        j = h - H
        tl.store(KC + j * kv_stride + pos * D + d, y.to(KC.dtype.element_ty))
        v = tl.load(QKV + (H + HKV + j) * D + d)
        tl.store(VC + j * kv_stride + pos * D + d, v.to(VC.dtype.element_ty))


@triton.jit
def attn_split_kernel(Q, KC, VC, POS, SLOPES, MW, LW, OW, qk_scale, G, kv_stride, n_split,
                      SPLIT_T: tl.constexpr, BLOCK_T: tl.constexpr, BG: tl.constexpr, D: tl.constexpr,
                      ALIBI: tl.constexpr, PREC: tl.constexpr):
    """One split of the keys 0..pos for the G query heads of one KV head: a partial online softmax.

    Program (s, j) covers keys [s * SPLIT_T, (s + 1) * SPLIT_T) of KV head j (KC, VC: (H_kv, T, D)) and
    stores, for each query row, the running max m and sum l (base 2) and the unnormalized output to the
    workspace MW, LW (H_kv, n_split, BG) and OW (H_kv, n_split, BG, D); splits past pos store nothing
    (attn_combine skips them). Scores: q . k * qk_scale (the logit scale times log2 e) plus ALiBi
    slope_h * log2 e * (key - pos).
    """
    s = tl.program_id(0)
    j = tl.program_id(1)
    pos = tl.load(POS)
    start = s * SPLIT_T
    if start <= pos:
        g = tl.arange(0, BG)
        d = tl.arange(0, D)
        q = tl.load(Q + (j * G + g)[:, None] * D + d[None, :], mask=(g < G)[:, None], other=0.0)
        if ALIBI:
            slope = tl.load(SLOPES + j * G + g, mask=g < G, other=0.0) * LOG2E
        m_i = tl.full((BG,), float("-inf"), tl.float32)
        l_i = tl.zeros((BG,), tl.float32)
        acc = tl.zeros((BG, D), tl.float32)
        end = tl.minimum(start + SPLIT_T, pos + 1)
        kb = KC + j * kv_stride
        vb = VC + j * kv_stride
        for off in range(0, SPLIT_T, BLOCK_T):  # constant bounds (the interpreter needs Python ints)
            if start + off < end:
                t = start + off + tl.arange(0, BLOCK_T)
                tm = t < end
                k = tl.load(kb + t[None, :] * D + d[:, None], mask=tm[None, :], other=0.0)  # (D, BLOCK_T)
                sc = tl.dot(q, k, input_precision=PREC) * qk_scale  # (BG, BLOCK_T)
                if ALIBI:
                    sc += slope[:, None] * (t - pos).to(tl.float32)[None, :]
                sc = tl.where(tm[None, :], sc, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(sc, axis=1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(sc - m_new[:, None])
                v = tl.load(vb + t[:, None] * D + d[None, :], mask=tm[:, None], other=0.0)  # (BLOCK_T, D)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                m_i = m_new
        row = (j * n_split + s) * BG + g
        tl.store(MW + row, m_i)
        tl.store(LW + row, l_i)
        tl.store(OW + row[:, None] * D + d[None, :], acc)


@triton.jit
def attn_combine_kernel(MW, LW, OW, OUT, POS, G, n_split, SPLIT_T: tl.constexpr, BG: tl.constexpr,
                        BLOCK_S: tl.constexpr, D: tl.constexpr):
    """Query head h's output from the partial softmaxes of the splits that reached pos -> OUT[h]."""
    h = tl.program_id(0)
    pos = tl.load(POS)
    sp = tl.arange(0, BLOCK_S)
    ok = (sp < n_split) & (sp * SPLIT_T <= pos)
    row = ((h // G) * n_split + sp) * BG + h % G
    m = tl.load(MW + row, mask=ok, other=float("-inf"))
    w = tl.where(ok, tl.exp2(m - tl.max(m, axis=0)), 0.0)
    den = tl.sum(w * tl.load(LW + row, mask=ok, other=0.0), axis=0)
    d = tl.arange(0, D)
    o = tl.load(OW + row[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
    tl.store(OUT + h * D + d, (tl.sum(o * w[:, None], axis=0) / den).to(OUT.dtype.element_ty))
