"""Triton kernels of the fused batch-1 decode step (launched by model/fused_decode.py).

One token, so every matmul is a matrix-vector product that streams its weight once: the step is
bound by memory bandwidth, and what costs time past the weight bytes is the number of kernels and the
gaps between them. These kernels keep a pre-norm layer to six launches:

    gemv(q|k|v; norm + token shift of x on the fly) -> attn_split (QK-norm, rotary/xPos, cache write)
    -> attn_combine -> gemv(out, + x; shift state) -> gemv(w_in, act; norm + shift) [-> gemv(w_gate)]
    -> gemv(w_out, + x; shift state)

A GEMV that reads a normalized input computes the row's statistics itself (every program reads the
whole row, 5 KB, from L2) and normalizes and shifts each K chunk as it streams the weight, so the norm
costs no launch. Token-shift state cannot be overwritten while that GEMV's programs still read it, so
its program 0 leaves the new normalized row in a scratch row and the next GEMV moves it into the state.

On Hopper the kernels launch with programmatic dependent launch: each starts while the previous one
runs, loads what no kernel of the step writes (a GEMV its first weight tile; the attention split the
cached keys and values before pos, the rotary rows and the gains; the position, which only the end of
the previous step moves) and then waits for it (`_after_previous`). The attention kernels read 2 MB of
cache and are bound by latency, so HBM would idle under them: the combine lets the out-projection launch
before its own wait, and the out-projection's programs load all of their weight rows (PRE tiles) while
the split and the combine run; the out-projection lets w_in launch early in the same way.

Arithmetic is float32; every value the torch step materializes in the model's dtype (a norm's
output, a projection, an activation, a residual sum) is rounded to that dtype at the same place, so
the fused step and the torch step (model/decode.py) agree to a few units in the last place.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _after_previous(PDL: tl.constexpr, EARLY_NEXT: tl.constexpr):
    """With programmatic dependent launch (PDL), wait here until the previous kernel has finished and its
    writes are visible, and let the next kernel launch: after the wait, or with EARLY_NEXT before it. Every
    program calls it before it reads or writes anything another kernel touches (weights excepted), and a
    kernel finishes only after its own wait, so the chain of waits keeps the kernels in order either way.
    EARLY_NEXT puts the next kernel's programs on the SMs (loading their weights) one kernel sooner."""
    if PDL:
        if EARLY_NEXT:
            gdc_launch_dependents()
            gdc_wait()
        else:
            gdc_wait()
            gdc_launch_dependents()


@triton.jit
def _rnd(x, like):
    """x rounded to the element type of pointer `like`, back in float32."""
    return x.to(like.dtype.element_ty).to(tl.float32)


@triton.jit
def _input(X, NW, NB, STATE, YNEW, kk, km, mean, rstd, dim, chunk, write_new,
           NORM: tl.constexpr, HAS_NB: tl.constexpr, SHIFTS: tl.constexpr):
    """Features kk of the GEMV's input: X itself (NORM 0), or norm(X) (1 LayerNorm, 2 RMSNorm, with the
    row's mean and rstd) rounded to X's dtype, with feature chunk k (1..SHIFTS) taken from row SHIFTS - k
    of STATE (SHIFTS, dim): the normalized row k positions back. write_new: also store norm(X) to YNEW."""
    y = tl.load(X + kk, mask=km, other=0.0).to(tl.float32)
    if NORM > 0:
        y = (y - mean) * rstd * tl.load(NW + kk, mask=km, other=0.0).to(tl.float32)
        if HAS_NB:
            y += tl.load(NB + kk, mask=km, other=0.0).to(tl.float32)
        y = _rnd(y, X)
    if SHIFTS > 0:
        if write_new:
            tl.store(YNEW + kk, y.to(YNEW.dtype.element_ty), mask=km)
        for k in tl.static_range(1, SHIFTS + 1):
            sel = (kk >= k * chunk) & (kk < (k + 1) * chunk)
            prev = tl.load(STATE + (SHIFTS - k) * dim + kk, mask=km & sel, other=0.0)
            y = tl.where(sel, prev.to(tl.float32), y)
    return y


@triton.jit
def gemv_kernel(X, OUT, W0, W1, W2, B0, B1, B2, RES, MUL, NW, NB, STATE, YNEW, UPD, UPD_NEW, ARG, COUNT, TOKEN,
                N0, N1, N2, SW0, SW1, SW2, chunk, eps, upd_dim, K: tl.constexpr,
                SEGMENTS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                HAS_MUL: tl.constexpr, NORM: tl.constexpr, HAS_NB: tl.constexpr, SHIFTS: tl.constexpr,
                UPD_SHIFTS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                KB: tl.constexpr, UB: tl.constexpr, ARGMAX: tl.constexpr, PRE: tl.constexpr,
                EARLY_NEXT: tl.constexpr, PDL: tl.constexpr):
    """OUT[r] = epilogue(sum_k W[r, k] in[k]) over the rows of up to three weights stacked (q | k | v).

    Program p takes BLOCK_N rows of one weight (the weights' blocks follow one another), the first PRE
    BLOCK_K-wide tiles loaded before `_after_previous` (EARLY_NEXT: see there); OUT holds the
    weights' outputs one after another. `in` is X, or norm(X) + token shift (`_input`; NORM, NW, NB, eps,
    STATE (SHIFTS, K), chunk), program 0 storing norm(X) to YNEW. Epilogue, each step rounded to OUT's
    dtype as torch would: + bias, ACT (0 none, 1 gelu (erf), 2 silu, 3 relu), x MUL[r] (a GLU gate),
    + RES[r] (the residual; RES may be OUT itself: a program reads only the rows it writes).
    UPD_SHIFTS > 0: program 0 also moves an earlier GEMV's normalized row UPD_NEW into the shift state
    UPD (UPD_SHIFTS, upd_dim): its rows move up one, UPD_NEW last. ARGMAX: also the index of the largest
    output into TOKEN (`_argmax`; one weight).
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
    # the first weight tile does not depend on the previous kernel: under PDL it loads while that one runs
    w0 = _wtile(wp, cols, K, EVEN_K)
    if PRE > 1:  # more of the weight before the wait (after a latency-bound kernel HBM is free meanwhile)
        w1 = _wtile(wp + BLOCK_K, cols + BLOCK_K, K, False)
    if PRE > 2:
        w2 = _wtile(wp + 2 * BLOCK_K, cols + 2 * BLOCK_K, K, False)
    if PRE > 3:
        w3 = _wtile(wp + 3 * BLOCK_K, cols + 3 * BLOCK_K, K, False)
    _after_previous(PDL, EARLY_NEXT)
    if UPD_SHIFTS > 0:
        if pid == 0:  # the previous norm's readers have all finished: move its row into the state
            offs = tl.arange(0, UB)
            um = offs < upd_dim
            for j in tl.static_range(0, UPD_SHIFTS - 1):
                tl.store(UPD + j * upd_dim + offs, tl.load(UPD + (j + 1) * upd_dim + offs, mask=um), mask=um)
            tl.store(UPD + (UPD_SHIFTS - 1) * upd_dim + offs, tl.load(UPD_NEW + offs, mask=um), mask=um)
    mean = 0.0
    rstd = 0.0
    if NORM > 0:  # the row's statistics, from the whole row
        offs = tl.arange(0, KB)
        xf = tl.load(X + offs, mask=offs < K, other=0.0).to(tl.float32)
        if NORM == 1:
            mean = tl.sum(xf, axis=0) / K
            xc = tl.where(offs < K, xf - mean, 0.0)
            rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / K + eps)
        else:
            rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / K + eps)
    first = pid == 0
    xk = _input(X, NW, NB, STATE, YNEW, cols, cols < K, mean, rstd, K, chunk, first, NORM, HAS_NB, SHIFTS)
    acc = w0.to(tl.float32) * xk[None, :]
    if PRE > 1:
        kk = cols + BLOCK_K
        acc += w1.to(tl.float32) * _input(X, NW, NB, STATE, YNEW, kk, kk < K, mean, rstd, K, chunk, first, NORM,
                                          HAS_NB, SHIFTS)[None, :]
    if PRE > 2:
        kk = cols + 2 * BLOCK_K
        acc += w2.to(tl.float32) * _input(X, NW, NB, STATE, YNEW, kk, kk < K, mean, rstd, K, chunk, first, NORM,
                                          HAS_NB, SHIFTS)[None, :]
    if PRE > 3:
        kk = cols + 3 * BLOCK_K
        acc += w3.to(tl.float32) * _input(X, NW, NB, STATE, YNEW, kk, kk < K, mean, rstd, K, chunk, first, NORM,
                                          HAS_NB, SHIFTS)[None, :]
    for k0 in range(PRE * BLOCK_K, K, BLOCK_K):
        kk = k0 + cols
        wk = _wtile(wp + k0, kk, K, EVEN_K)
        xk = _input(X, NW, NB, STATE, YNEW, kk, kk < K, mean, rstd, K, chunk, first, NORM, HAS_NB, SHIFTS)
        acc += wk.to(tl.float32) * xk[None, :]
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
    if ARGMAX:
        _argmax(_rnd(y, OUT), rows, n, ARG, COUNT, TOKEN)


@triton.jit
def _wtile(wp, kk, K: tl.constexpr, EVEN: tl.constexpr):
    """A weight tile (its rows, columns kk), read once and so evicted first; columns past K read 0 (EVEN: none are)."""
    if EVEN:
        return tl.load(wp, eviction_policy="evict_first")
    return tl.load(wp, mask=(kk < K)[None, :], other=0.0, eviction_policy="evict_first")


@triton.jit
def _argmax(y, rows, n, ARG, COUNT, TOKEN):
    """Greedy decoding inside the LM head: every program offers its largest logit to ARG (one int64 whose
    high half orders like the float and low half like the reversed row, so ties go to the first row, as
    torch.argmax does); the last program to finish writes the winning row to TOKEN and re-arms ARG and
    COUNT for the next step."""
    bits = y.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # floats in the order of signed ints
    key = (ordered.to(tl.int64) << 32) | (4294967295 - rows.to(tl.int64))
    key = tl.where(rows < n, key, -9223372036854775808)
    tl.atomic_max(ARG, tl.max(key, axis=0))
    done = tl.atomic_add(COUNT, 1)  # acq_rel: the max above is visible to whoever finishes last
    if done == tl.num_programs(0) - 1:
        best = tl.atomic_xchg(ARG, -9223372036854775808)
        tl.store(TOKEN, 4294967295 - (best & 4294967295))
        tl.atomic_xchg(COUNT, 0)


@triton.jit
def _qk_rows(QKV, G_PTR, COS, SIN, XS, heads, rows, rmask, pos,
             D: tl.constexpr, ROT: tl.constexpr, GAIN: tl.constexpr, XPOS: tl.constexpr):
    """What QK-norm and rotary need of heads `heads` (R,) besides the heads themselves, none of it written by
    the step's kernels (so it loads before `_after_previous`): gain rows `rows` (g) and their rotation
    partners (gp), the rotary tables' row pos (c, s; ROT = 0: none) and the xPos scale (sc)."""
    d = tl.arange(0, D)
    half: tl.constexpr = ROT // 2
    dp = tl.where(d < half, d + half, d - half)  # the rotation partner of feature d (d < ROT)
    m2 = rmask[:, None]
    g = tl.zeros((D,), tl.float32)  # (unused unless set below)
    gp = g
    c = g
    s = g
    sc = g
    if GAIN:
        g = tl.load(G_PTR + rows[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
        gp = tl.load(G_PTR + rows[:, None] * D + dp[None, :], mask=m2 & (d < ROT)[None, :], other=0.0)
        gp = gp.to(tl.float32)
    if ROT > 0:
        c = tl.load(COS + pos * ROT + d, mask=d < ROT, other=1.0)
        s = tl.load(SIN + pos * ROT + d, mask=d < ROT, other=0.0)
        if XPOS:
            sc = tl.load(XS + pos * ROT + d, mask=d < ROT, other=1.0)
    return g, gp, c, s, sc


@triton.jit
def _qk_apply(QKV, heads, rmask, g, gp, c, s, sc, eps, INV: tl.constexpr,
              D: tl.constexpr, ROT: tl.constexpr, QK_NORM: tl.constexpr, GAIN: tl.constexpr, XPOS: tl.constexpr):
    """Heads `heads` (R,) of QKV after QK-norm (x / max(|x|, eps), x gain) and rotary/xPos (`_qk_rows`'s
    tables); xPos multiplies by the scale, or with INV (keys) by its inverse. (R, D) float32, rounded as
    torch rounds."""
    d = tl.arange(0, D)
    half: tl.constexpr = ROT // 2
    dp = tl.where(d < half, d + half, d - half)
    m2 = rmask[:, None]
    x = tl.load(QKV + heads[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
    xp = tl.load(QKV + heads[:, None] * D + dp[None, :], mask=m2 & (d < ROT)[None, :], other=0.0).to(tl.float32)
    if QK_NORM:
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        x, xp = _rnd(x * inv[:, None], QKV), _rnd(xp * inv[:, None], QKV)
        if GAIN:
            x, xp = _rnd(x * g, QKV), _rnd(xp * gp, QKV)
    if ROT > 0:
        rot = x * c[None, :] + tl.where(d < half, -xp, xp) * s[None, :]
        if XPOS:
            if INV:
                rot = rot * (1.0 / sc)[None, :]
            else:
                rot = rot * sc[None, :]
        x = tl.where((d < ROT)[None, :], rot, x)
    return _rnd(x, QKV)


@triton.jit
def attn_split_kernel(QKV, KC, VC, POS, SLOPES, GQ, GK, COS, SIN, XS, MW, LW, OW, qk_scale, eps, H, HKV, G,
                      kv_stride, N_SPLIT: tl.constexpr, SPLIT_T: tl.constexpr, BLOCK_T: tl.constexpr,
                      BG: tl.constexpr, D: tl.constexpr, ROT: tl.constexpr, QK_NORM: tl.constexpr,
                      GAIN: tl.constexpr, XPOS: tl.constexpr, ALIBI: tl.constexpr, PREC: tl.constexpr,
                      LSTEP, START, PERIOD, ANCHORED: tl.constexpr, PDL: tl.constexpr):
    """One split of the keys 0..pos for the G query heads of one KV head: a partial online softmax.

    QKV holds this position's H query heads, H_kv key heads and H_kv value heads, before QK-norm and
    rotary, which each program applies to the heads it needs (`_qk_apply`). This position's key and value
    enter the scores from registers (the program whose split holds pos also writes them to the cache KC, VC,
    one layer's (H_kv, T, D), for later steps), so the keys before pos, written by earlier steps, are loaded
    before `_after_previous`: the first block of each split streams in while the previous kernel runs.
    Program (s, j) covers keys [s * SPLIT_T, (s + 1) * SPLIT_T) of KV head j and stores, for each query
    row, the running max m and sum l (base 2) and the unnormalized output to the workspace MW, LW
    (H_kv, N_SPLIT, BG) and OW (H_kv, N_SPLIT, BG, D); splits past pos store nothing (attn_combine skips
    them). Scores: q . k * qk_scale (the logit scale times log2 e) plus ALiBi slope_h log2 e (key - pos).
    ANCHORED (xPos over several anchor blocks of PERIOD positions, positional.XPos; slot t holds position
    START + t): a key tile of block b meets the query times 2^((b(pos) - b) LSTEP), LSTEP (ROT,) the log2 of
    one block's step; PERIOD and START are multiples of BLOCK_T, so a tile lies in one block.
    """
    s = tl.program_id(0)
    j = tl.program_id(1)
    pos = tl.load(POS)  # advanced at the end of the previous step, which has finished
    start = s * SPLIT_T
    d = tl.arange(0, D)
    g = tl.arange(0, BG)
    one = tl.arange(0, 1)
    kb = KC + j * kv_stride
    vb = VC + j * kv_stride
    t = start + tl.arange(0, BLOCK_T)
    old = t < pos
    k0 = tl.load(kb + t[None, :] * D + d[:, None], mask=old[None, :], other=0.0)  # (D, BLOCK_T)
    v0 = tl.load(vb + t[:, None] * D + d[None, :], mask=old[:, None], other=0.0)  # (BLOCK_T, D)
    gq, gqp, c, sn, sc = _qk_rows(QKV, GQ, COS, SIN, XS, j * G + g, j * G + g, g < G, pos, D, ROT, GAIN, XPOS)
    gk, gkp, _, _, _ = _qk_rows(QKV, GK, COS, SIN, XS, H + j + one, j + one, one < 1, pos, D, ROT, GAIN, XPOS)
    if ALIBI:
        slope = tl.load(SLOPES + j * G + g, mask=g < G, other=0.0) * LOG2E
    _after_previous(PDL, False)
    if start <= pos:
        knew = _qk_apply(QKV, H + j + one, one < 1, gk, gkp, c, sn, sc, eps, True, D, ROT, QK_NORM, GAIN, XPOS)
        knew = tl.reshape(knew.to(KC.dtype.element_ty), (D,))
        vnew = tl.load(QKV + (H + HKV + j) * D + d).to(VC.dtype.element_ty)
        if pos < start + SPLIT_T:  # this split holds pos: this position's key and value into the cache
            tl.store(kb + pos * D + d, knew)
            tl.store(vb + pos * D + d, vnew)
        q32 = _qk_apply(QKV, j * G + g, g < G, gq, gqp, c, sn, sc, eps, False, D, ROT, QK_NORM, GAIN, XPOS)
        q = q32.to(KC.dtype.element_ty)  # (BG, D)
        if ANCHORED:
            lstep = tl.load(LSTEP + d, mask=d < ROT, other=0.0)  # (D,): 0 past the rotated features
            mine = (START + pos) // PERIOD
        m_i = tl.full((BG,), float("-inf"), tl.float32)
        l_i = tl.zeros((BG,), tl.float32)
        acc = tl.zeros((BG, D), tl.float32)
        end = tl.minimum(start + SPLIT_T, pos + 1)
        for off in tl.static_range(0, SPLIT_T, BLOCK_T):
            if start + off < end:
                t = start + off + tl.arange(0, BLOCK_T)
                tm = t < end
                if off == 0:
                    k, v = k0, v0
                else:
                    k = tl.load(kb + t[None, :] * D + d[:, None], mask=(t < pos)[None, :], other=0.0)
                    v = tl.load(vb + t[:, None] * D + d[None, :], mask=(t < pos)[:, None], other=0.0)
                k = tl.where((t == pos)[None, :], knew[:, None], k)  # (D, BLOCK_T)
                v = tl.where((t == pos)[:, None], vnew[None, :], v)  # (BLOCK_T, D)
                qt = q
                if ANCHORED:  # this tile's anchor block
                    kdiff = (mine - (START + start + off) // PERIOD).to(tl.float32)
                    qt = (q32 * tl.exp2(kdiff * lstep)[None, :]).to(KC.dtype.element_ty)
                sc_ = tl.dot(qt, k, input_precision=PREC) * qk_scale  # (BG, BLOCK_T)
                if ALIBI:
                    sc_ += slope[:, None] * (t - pos).to(tl.float32)[None, :]
                sc_ = tl.where(tm[None, :], sc_, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(sc_, axis=1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(sc_ - m_new[:, None])
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                m_i = m_new
        row = (j * N_SPLIT + s) * BG + g
        tl.store(MW + row, m_i)
        tl.store(LW + row, l_i)
        tl.store(OW + row[:, None] * D + d[None, :], acc)


@triton.jit
def attn_combine_kernel(MW, LW, OW, OUT, POS, G, N_SPLIT: tl.constexpr, SPLIT_T: tl.constexpr, BG: tl.constexpr,
                        BLOCK_S: tl.constexpr, D: tl.constexpr, EARLY_NEXT: tl.constexpr, PDL: tl.constexpr):
    """Query head h's output from the partial softmaxes of the splits that reached pos -> OUT[h], merged
    BLOCK_S splits at a time.

    EARLY_NEXT (with PDL): let the next kernel (the out-projection) launch before waiting for the split,
    so its programs are resident and loading their weights while the latency-bound split and this kernel
    run (`_after_previous`)."""
    h = tl.program_id(0)
    pos = tl.load(POS)
    d = tl.arange(0, D)
    _after_previous(PDL, EARLY_NEXT)
    m_run = tl.full((1,), float("-inf"), tl.float32)
    l_run = tl.zeros((1,), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    for c0 in range(0, N_SPLIT, BLOCK_S):
        sp = c0 + tl.arange(0, BLOCK_S)
        ok = (sp < N_SPLIT) & (sp * SPLIT_T <= pos)
        row = ((h // G) * N_SPLIT + sp) * BG + h % G
        m = tl.load(MW + row, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m_run, tl.max(m, axis=0))  # finite: split 0 always counts
        alpha = tl.exp2(m_run - m_new)
        w = tl.where(ok, tl.exp2(m - m_new), 0.0)
        o = tl.load(OW + row[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        l_run = l_run * alpha + tl.sum(w * tl.load(LW + row, mask=ok, other=0.0), axis=0)
        acc = acc * alpha + tl.sum(o * w[:, None], axis=0)
        m_run = m_new
    tl.store(OUT + h * D + d, (acc / l_run).to(OUT.dtype.element_ty))
