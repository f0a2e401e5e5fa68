"""Triton kernels of the flash-attention backend (their launches are in triton_flash.py, the custom operator
wrapping them in triton_op.py).

Imported only when the backend first runs, so the package imports without Triton. Tiles are
addressed as (batch x heads, positions, head dim); `_rows` loads one through a TMA descriptor or
through pointers. Scores are in base 2 (scale and ALiBi slopes pre-multiplied by log2(e)).
"""

import triton
import triton.language as tl


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    if IEEE:
        r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        r = tl.dot(a, b, acc, input_precision="ieee")
    else:
        r = tl.dot(a, b, acc)
    return r


@triton.jit
def _rows(desc, ptr, bh, row0, n, s_bh, s_n, BLOCK: tl.constexpr, D: tl.constexpr, TMA: tl.constexpr):
    """Rows row0 .. row0 + BLOCK of head bh as a (BLOCK, D) tile, zeros past row n."""
    if TMA:
        t = desc.load([bh, row0, 0]).reshape(BLOCK, D)
    else:
        offs = row0 + tl.arange(0, BLOCK)
        t = tl.load(ptr + bh * s_bh + offs[:, None] * s_n + tl.arange(0, D)[None, :],
                    mask=offs[:, None] < n, other=0.0)
    return t


@triton.jit
def _head(HEAD0, HR, H, HC: tl.constexpr):
    """A launch covers heads HEAD0 .. HEAD0 + HR of every batch row, HC heads a program (program_id(0) =
    b * HR / HC + (head - HEAD0) / HC): the program's first head's (batch x head) index into (B*H, ...)
    tensors, its batch row and the head."""
    i = tl.program_id(0)
    b = i // (HR // HC)
    h = HEAD0 + i % (HR // HC) * HC
    return b * H + h, b, h


@triton.jit
def _slope(S, h, ALIBI: tl.constexpr):
    """Head h's ALiBi slope in base 2 (scores are base 2), or 0."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(S + h) * 1.4426950408889634
    return slope


@triton.jit
def _bias(s, q_pos, k_pos, slope, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr):
    """ALiBi (-slope * distance) and, on masked blocks, the causal mask, on base-2 scores."""
    dist = q_pos[:, None] - k_pos[None, :]
    if ALIBI:
        if CAUSAL:
            s = s - slope * dist.to(tl.float32)
        else:
            s = s - slope * tl.abs(dist).to(tl.float32)
    if MASK:
        s = tl.where(dist >= 0, s, float("-inf"))
    return s


@triton.jit
def _probs(qk, qk_scale, lse, q_pos, k_pos, q0, slope, ALIBI: tl.constexpr, CAUSAL: tl.constexpr,
           MASK: tl.constexpr):
    """The backward's probabilities exp2(score - lse) from the raw q.k tile. Causal ALiBi in per-key form, as
    in the forward: -slope (i - j) = slope (j - q0) - slope (i - q0), the first a vector over the keys, the
    second folded into the row's lse; two adds a score instead of a subtract, a convert, a multiply and a
    subtract. (q0: the tile's first query, so that both terms stay small where p is not negligible.)"""
    row = lse
    if ALIBI and CAUSAL:
        s = qk * qk_scale + (slope * (k_pos - q0).to(tl.float32))[None, :]
        row = lse + slope * (q_pos - q0).to(tl.float32)
    else:
        s = _bias(qk * qk_scale, q_pos, k_pos, slope, ALIBI, CAUSAL, False)
    if MASK:
        s = tl.where(q_pos[:, None] >= k_pos[None, :], s, float("-inf"))
    return tl.exp2(s - row[:, None])


@triton.jit
def _fwd_block(acc, l_i, m_i, q, kd, vd, K, V, kbh, start_n, q_pos, q0, slope, qk_scale, NK, s_kbh, s_kn,
               ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
               TMA: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    k_pos = start_n + tl.arange(0, BLOCK_N)
    k = _rows(kd, K, kbh, start_n, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    qk = _mm(q, tl.trans(k), IEEE)  # (BLOCK_M, BLOCK_N)
    if ALIBI or MASK:
        s = qk * qk_scale  # base 2
        if ALIBI and CAUSAL:  # per-key form: differs from -slope * (i - j) by a per-row constant
            s = s + (slope * (k_pos - q0).to(tl.float32))[None, :]
        elif ALIBI:
            s = _bias(s, q_pos, k_pos, slope, True, False, False)
        if MASK:
            valid = k_pos[None, :] < NK
            if CAUSAL:
                valid = valid & (k_pos[None, :] <= q_pos[:, None])
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every row sees a key in its first block
        s = s - m_new[:, None]
    else:  # no bias, no mask: scale and shift in one multiply-add (qk_scale > 0, so max commutes with it)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        s = qk * qk_scale - m_new[:, None]
    p = tl.exp2(s)
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _rows(vd, V, kbh, start_n, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
    return acc, l_i, m_new


@triton.jit
def _fwd_span(acc, l_i, m_i, q, kd, vd, K, V, kbh, lo, hi, q_pos, q0, slope, qk_scale, NK, s_kbh, s_kn,
              ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
              TMA: tl.constexpr, WS: tl.constexpr, INTERP: tl.constexpr, NK_C: tl.constexpr,
              BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Key blocks lo .. hi (lo a multiple of BLOCK_N). The interpreter needs Python-int loop bounds."""
    if INTERP:
        for start_n in range(0, NK_C, BLOCK_N):
            if (start_n >= lo) & (start_n < hi):
                acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, kd, vd, K, V, kbh, start_n, q_pos, q0, slope,
                                           qk_scale, NK, s_kbh, s_kn, ALIBI, CAUSAL, MASK, IEEE, TMA,
                                           BLOCK_N, D)
    else:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, kd, vd, K, V, kbh, start_n, q_pos, q0, slope,
                                       qk_scale, NK, s_kbh, s_kn, ALIBI, CAUSAL, MASK, IEEE, TMA, BLOCK_N, D)
    return acc, l_i, m_i


@triton.jit
def _fwd_spans(acc, l_i, m_i, q, kd, vd, K, V, kbh, full, hi, q_pos, q0, slope, qk_scale, NK, s_kbh, s_kn,
               ALIBI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr,
               WS: tl.constexpr, INTERP: tl.constexpr, NK_C: tl.constexpr, BLOCK_N: tl.constexpr,
               D: tl.constexpr):
    """The unmasked key blocks 0 .. full, then the masked ones full .. hi."""
    acc, l_i, m_i = _fwd_span(acc, l_i, m_i, q, kd, vd, K, V, kbh, 0, full, q_pos, q0, slope, qk_scale, NK,
                              s_kbh, s_kn, ALIBI, CAUSAL, False, IEEE, TMA, WS, INTERP, NK_C, BLOCK_N, D)
    acc, l_i, m_i = _fwd_span(acc, l_i, m_i, q, kd, vd, K, V, kbh, full, hi, q_pos, q0, slope, qk_scale, NK,
                              s_kbh, s_kn, ALIBI, CAUSAL, True, IEEE, TMA, False, INTERP, NK_C, BLOCK_N, D)
    return acc, l_i, m_i


@triton.jit
def _row_reach(q, qk_scale):
    """|q_i| c per row of a query tile (c = |qk_scale|), with 1% on top for the rounding of the scores: times a
    bound on key norms, a bound on each row's q.k term (Cauchy-Schwarz)."""
    qf = q.to(tl.float32)
    return tl.sqrt(tl.sum(qf * qf, 1)) * (1.01 * tl.abs(qk_scale))


@triton.jit
def _reach(q, QN, bh, rows, NQ, qk_scale, HAS_QN: tl.constexpr):
    """Per row of a query tile, a bound r_i with |s_ij| <= r_i |k_j|' for every causal key (base-2 scores): from
    the given norms QN (B*H, NQ) when HAS_QN (and KN then bounds the matching key norms), else |q_i| c
    (`_row_reach`). With xPos relative per block, the model passes the norms of q and k before rotary and
    xPos: pair p of q_i . k_j carries zeta_p^((i - j)/base) <= 1 for j <= i, and a rotation keeps each
    pair's norm, so |q_i . k_j| <= sum_p |q_i,p| |k_j,p| <= |q_i| |k_j| (Cauchy-Schwarz twice) for the
    unscaled vectors, a bound the scaled ones (up to 3.5^(P / 2 base) per feature) do not give. 1% on top
    covers the rounding of the scaled inputs and the scores."""
    if HAS_QN:
        qn = tl.load(QN + bh * NQ + rows, mask=rows < NQ, other=0.0)
        return qn * (1.01 * tl.abs(qk_scale))
    return _row_reach(q, qk_scale)


@triton.jit
def _skip_to(cut, q0, slope, full, BLOCK_N: tl.constexpr):
    """The first key block to read, given for each row r of the tile that keys before q0 + cut[r] do not
    count for it: block lo - BLOCK_N ends before every row's cut. Zero (skip nothing) unless slope > 0 and
    every cut is finite (NaN or infinite norms, maxima or lse make the bound meaningless); at most `full`."""
    cut = tl.min(cut, 0)
    ok = (slope > 0) & (cut > -1.0e30) & (cut < 1.0e30)
    cut = tl.where(ok, tl.maximum(q0 + cut, -1.0), -1.0)
    lo = tl.maximum(tl.floor(cut / BLOCK_N).to(tl.int32), 0) * BLOCK_N
    return tl.minimum(lo, full)


@triton.jit
def _first_needed_key(reach, m_i, kn, q0, slope, skip_t, full, BLOCK_N: tl.constexpr):
    """Causal ALiBi, once the tile's diagonal blocks are done: the first key block before `full` whose
    probabilities can still count, found from the running row maxima m_i.

    Scores are base 2 in the forward's per-key form, s_ij = q_i.k_j c + slope (j - q0) (c = |qk_scale|), and
    by Cauchy-Schwarz s_ij <= |q_i| |k|max c + slope (j - q0), with |k|max (kn) bounding the norms of keys
    0 .. full - 1. Every row's final maximum M_i >= m_i, so a key with |q_i| |k|max c + slope (j - q0) - m_i
    < -skip_t for every row has p_ij = 2^(s_ij - M_i) < 2^-skip_t, while the row's largest term adds 1 to
    its softmax sum. With skip_t = 32 + log2(Nk) the keys skipped weigh less than 2^-32 of every row's
    sum, 2^8 below float32's unit roundoff. Row i's keys j < q0 + (m_i - |q_i| |k|max c - skip_t) / slope
    qualify; 1% on the norm term and one unit on skip_t cover the rounding of the scores. `reach` is
    |q_i| c (`_reach`: or from the unscaled norms under xPos)."""
    cut = (m_i - reach * kn - (skip_t + 1.0)) / tl.where(slope > 0, slope, 1.0)
    return _skip_to(cut, q0, slope, full, BLOCK_N)


@triton.jit
def alibi_first_block(Q, K, S, KN, QN, LO, s_qbh, s_qn, s_kbh, s_kn, H, G, NQ, OFF, qk_scale, HEAD0, HR, NKN,
                      SKIP_T, KNB: tl.constexpr, TILE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                      HAS_QN: tl.constexpr):
    """For the Hopper forward (gluon_flash_kernels), causal ALiBi, the NQ queries at positions OFF .. OFF + NQ - 1
    of the keys: the first key block (index, in blocks of BLOCK_N) that can still count for a row of each
    TILE-row query tile, into LO[bh, tile].

    `_first_needed_key`'s bound with a lower bound on every row's final maximum taken before any block
    runs: row i sees its own key, so its maximum is at least its own score s_ii = q_i.k_i qk_scale
    + slope (i - q0) (per-key form). Rows past NQ count as no constraint."""
    pid_m = tl.program_id(1)
    bh, b, h = _head(HEAD0, HR, H, 1)
    kbh = b * (H // G) + h // G
    rows = pid_m * TILE + tl.arange(0, TILE)  # the tile's query rows
    q0 = pid_m * TILE + OFF  # the position of its first query
    offs = rows + OFF  # the rows' positions: their own keys
    dims = tl.arange(0, D)
    inside = rows < NQ
    q = tl.load(Q + bh * s_qbh + rows[:, None] * s_qn + dims[None, :], mask=inside[:, None], other=0.0)
    k = tl.load(K + kbh * s_kbh + offs[:, None] * s_kn + dims[None, :], mask=inside[:, None], other=0.0)
    slope = _slope(S, h, True)
    own = tl.sum(q.to(tl.float32) * k.to(tl.float32), 1) * qk_scale + slope * (offs - q0).to(tl.float32)
    full = q0 // BLOCK_N * BLOCK_N  # keys every row of the tile sees
    kn = tl.load(KN + kbh * NKN + tl.maximum(full - 1, 0) // KNB)
    reach = _reach(q, QN, bh, rows, NQ, qk_scale, HAS_QN)
    cut = (own - reach * kn - (SKIP_T + 1.0)) / tl.where(slope > 0, slope, 1.0)
    cut = tl.where(inside, cut, float("inf"))  # a row past N: no constraint
    lo = _skip_to(cut, q0, slope, full, BLOCK_N)
    tl.store(LO + bh * tl.num_programs(1) + pid_m, lo // BLOCK_N)


@triton.jit
def flash_fwd(qd, kd, vd, Q, K, V, S, KN, QN, Out, L, CNT, s_qbh, s_qn, s_kbh, s_kn, s_obh, s_on,
        H, G, NQ, NK, OFF, qk_scale, HEAD0, HR, NKN, SKIP_T,
        ALIBI: tl.constexpr, CAUSAL: tl.constexpr, SKIP: tl.constexpr, KNB: tl.constexpr, IEEE: tl.constexpr,
        TMA: tl.constexpr, COUNT: tl.constexpr, HAS_QN: tl.constexpr,
        WS: tl.constexpr, INTERP: tl.constexpr, NQ_C: tl.constexpr, NK_C: tl.constexpr, D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """SKIP (causal ALiBi only): the diagonal blocks run first, then key blocks too far back to matter are
    skipped (`_first_needed_key`, with threshold SKIP_T); KN (B*H_kv, NKN) holds the largest norm of keys
    0 .. (c + 1) * KNB - 1 of each KV head at [kv head, c], and HAS_QN: QN the query rows' matching norms
    (`_reach`). COUNT: the program adds the number of
    (BLOCK_M x BLOCK_N) tiles it computed to CNT[0] (int64; triton_flash.count_blocks)."""
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest causal rows first: a shorter tail
    bh, b, h = _head(HEAD0, HR, H, 1)
    kbh = b * (H // G) + h // G
    q0 = pid_m * BLOCK_M + OFF  # position of the tile's first query
    q_pos = q0 + tl.arange(0, BLOCK_M)
    q = _rows(qd, Q, bh, pid_m * BLOCK_M, NQ, s_qbh, s_qn, BLOCK_M, D, TMA)
    slope = _slope(S, h, ALIBI)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    if CAUSAL:
        full = (q0 + 1) // BLOCK_N * BLOCK_N  # keys every row of the tile sees
        hi = tl.minimum(NK, q0 + BLOCK_M)
    else:
        full = NK // BLOCK_N * BLOCK_N
        hi = NK
    if SKIP:  # the diagonal blocks first: their row maxima tell which earlier blocks can still count
        # They start at the block holding the tile's first query, so every row sees at least its own key and
        # its running maximum is finite (from `full`, the first row would see none when q0 + 1 is a multiple
        # of BLOCK_N: -inf - -inf made the row NaN).
        diag = q0 // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _fwd_span(acc, l_i, m_i, q, kd, vd, K, V, kbh, diag, hi, q_pos, q0, slope, qk_scale, NK,
                                  s_kbh, s_kn, ALIBI, CAUSAL, True, IEEE, TMA, False, INTERP, NK_C, BLOCK_N, D)
        kn = tl.load(KN + kbh * NKN + tl.maximum(diag - 1, 0) // KNB)  # bounds the norms of keys 0 .. diag - 1
        reach = _reach(q, QN, bh, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), NQ, qk_scale, HAS_QN)
        lo = _first_needed_key(reach, m_i, kn, q0, slope, SKIP_T, diag, BLOCK_N)
        acc, l_i, m_i = _fwd_span(acc, l_i, m_i, q, kd, vd, K, V, kbh, lo, diag, q_pos, q0, slope, qk_scale, NK,
                                  s_kbh, s_kn, ALIBI, CAUSAL, False, IEEE, TMA, WS, INTERP, NK_C, BLOCK_N, D)
        if COUNT:
            tl.atomic_add(CNT, (tl.cdiv(hi - diag, BLOCK_N) + (diag - lo) // BLOCK_N).to(tl.int64))
    else:
        acc, l_i, m_i = _fwd_spans(acc, l_i, m_i, q, kd, vd, K, V, kbh, full, hi, q_pos, q0, slope, qk_scale, NK,
                                   s_kbh, s_kn, ALIBI, CAUSAL, IEEE, TMA, WS, INTERP, NK_C, BLOCK_N, D)
        if COUNT:
            tl.atomic_add(CNT, tl.cdiv(hi, BLOCK_N).to(tl.int64))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    out = acc / l_i[:, None]
    tl.store(Out + bh * s_obh + offs_m[:, None] * s_on + tl.arange(0, D)[None, :],
             out.to(Out.dtype.element_ty), mask=offs_m[:, None] < NQ)
    lse = m_i + tl.log2(l_i)
    if ALIBI and CAUSAL:  # back to the -slope * (i - j) form the backward recomputes
        lse = lse - slope * (q_pos - q0).to(tl.float32)
    tl.store(L + bh * NQ + offs_m, lse, mask=offs_m < NQ)


@triton.jit
def _dkdv_block(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, start_m, offs_n, slope, qk_scale, NQ, OFF,
                s_qbh, s_qn, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr,
                IEEE: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, D: tl.constexpr):
    # rows past NQ load as zeros (q, dO, lse, delta), so they add nothing to dK or dV
    m_idx = start_m + tl.arange(0, BLOCK_M)
    q = _rows(qd, Q, bh, start_m, NQ, s_qbh, s_qn, BLOCK_M, D, TMA)
    do = _rows(dod, DO, bh, start_m, NQ, s_qbh, s_qn, BLOCK_M, D, TMA)
    lse = tl.load(L + bh * NQ + m_idx, mask=m_idx < NQ, other=0.0)
    delta = tl.load(DL + bh * NQ + m_idx, mask=m_idx < NQ, other=0.0)
    p = _probs(_mm(q, tl.trans(k), IEEE), qk_scale, lse, m_idx + OFF, offs_n, start_m + OFF, slope, ALIBI, CAUSAL,
               MASK)  # (BLOCK_M, BLOCK_N)
    dv = _mma(tl.trans(p.to(do.dtype)), do, dv, IEEE)
    ds = p * (_mm(do, tl.trans(v), IEEE) - delta[:, None])
    dk = _mma(tl.trans(ds.to(q.dtype)), q, dk, IEEE)
    return dk, dv


@triton.jit
def _dkdv_span(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, lo, hi, offs_n, slope, qk_scale, NQ, OFF,
               s_qbh, s_qn, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
               TMA: tl.constexpr, INTERP: tl.constexpr, NQ_C: tl.constexpr, BLOCK_M: tl.constexpr,
               D: tl.constexpr):
    if INTERP:
        for start_m in range(0, NQ_C, BLOCK_M):
            if (start_m >= lo) & (start_m < hi):
                dk, dv = _dkdv_block(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, start_m, offs_n, slope, qk_scale,
                                     NQ, OFF, s_qbh, s_qn, ALIBI, CAUSAL, MASK, IEEE, TMA, BLOCK_M, D)
    else:
        for start_m in tl.range(lo, hi, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, start_m, offs_n, slope, qk_scale,
                                 NQ, OFF, s_qbh, s_qn, ALIBI, CAUSAL, MASK, IEEE, TMA, BLOCK_M, D)
    return dk, dv


@triton.jit
def flash_bwd_dkdv(qd, kd, vd, dod, Q, K, V, S, DO, L, DL, DK, DV, U, CNT, s_qbh, s_qn, s_kbh, s_kn, s_dbh, s_dn,
             H, G, NQ, NK, OFF, qk_scale, scale, HEAD0, HR, SKIP_T,
             ALIBI: tl.constexpr, CAUSAL: tl.constexpr, SKIP: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr,
             COUNT: tl.constexpr,
              INTERP: tl.constexpr, NQ_C: tl.constexpr, NK_C: tl.constexpr, D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HC: tl.constexpr):
    """dK, dV of one key block, summed over HC query heads of one KV group (heads h0 .. h0 + HC, HC dividing
    the group and the launch's heads): the key block stays in registers while the heads' query blocks
    stream past. Q, DO: (B*H, NQ, D); K, V: (B*H_kv, NK, D); DK, DV: (B*H/HC, NK, D), one slice per
    program's heads, which the caller sums per group (HC = 1, G = 1: the gradients themselves). SKIP (causal
    ALiBi): each head's query blocks stop where the block's probabilities fall below 2^-SKIP_T
    (`_dkdv_last_query`). COUNT: the program adds the (BLOCK_M x BLOCK_N) tiles it computed to CNT[0]."""
    pid_n = tl.program_id(1)  # the first key blocks have the most queries: they start first
    _, b, h0 = _head(HEAD0, HR, H, HC)
    kbh = b * (H // G) + h0 // G
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = _rows(kd, K, kbh, n0, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    v = _rows(vd, V, kbh, n0, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    if CAUSAL:  # query blocks that see part of this key block, then those that see all of it
        lo = tl.maximum(0, n0 - OFF) // BLOCK_M * BLOCK_M
        full = tl.minimum(tl.cdiv(tl.maximum(0, n0 + BLOCK_N - 1 - OFF), BLOCK_M) * BLOCK_M, NQ)
    else:
        lo = 0
        full = 0
    for hh in range(HC):
        h = h0 + hh
        bh = b * H + h
        slope = _slope(S, h, ALIBI)
        dk, dv = _dkdv_span(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, lo, full, offs_n, slope, qk_scale, NQ, OFF,
                            s_qbh, s_qn, ALIBI, CAUSAL, True, IEEE, TMA, INTERP, NQ_C, BLOCK_M, D)
        hi = NQ
        if SKIP:
            hi = _dkdv_last_query(tl.load(U + bh), n0 + BLOCK_N - 1, OFF, NQ, slope, SKIP_T, full, BLOCK_M)
        dk, dv = _dkdv_span(dk, dv, k, v, qd, dod, Q, DO, L, DL, bh, full, hi, offs_n, slope, qk_scale, NQ, OFF,
                            s_qbh, s_qn, ALIBI, CAUSAL, False, IEEE, TMA, INTERP, NQ_C, BLOCK_M, D)
        if COUNT:
            tl.atomic_add(CNT, (tl.cdiv(tl.maximum(full - lo, 0), BLOCK_M)
                                + tl.cdiv(tl.maximum(hi - full, 0), BLOCK_M)).to(tl.int64))
    out = (b * (H // HC) + h0 // HC) * s_dbh + offs_n[:, None] * s_dn + tl.arange(0, D)[None, :]
    kv_mask = offs_n[:, None] < NK
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_block(dq, q, do, lse, delta, kd, vd, K, V, kbh, start_n, q_pos, q0, slope, qk_scale, NK, s_kbh, s_kn,
              ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
              TMA: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    # keys past NK load as zeros: their ds multiplies a zero key row, adding nothing to dQ
    k = _rows(kd, K, kbh, start_n, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    v = _rows(vd, V, kbh, start_n, NK, s_kbh, s_kn, BLOCK_N, D, TMA)
    k_pos = start_n + tl.arange(0, BLOCK_N)
    p = _probs(_mm(q, tl.trans(k), IEEE), qk_scale, lse, q_pos, k_pos, q0, slope, ALIBI, CAUSAL, MASK)
    ds = p * (_mm(do, tl.trans(v), IEEE) - delta[:, None])
    return _mma(ds.to(k.dtype), k, dq, IEEE)


@triton.jit
def _dq_span(dq, q, do, lse, delta, kd, vd, K, V, kbh, lo, hi, q_pos, q0, slope, qk_scale, NK, s_kbh, s_kn,
             ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
             TMA: tl.constexpr, INTERP: tl.constexpr, NK_C: tl.constexpr, BLOCK_N: tl.constexpr,
             D: tl.constexpr):
    if INTERP:
        for start_n in range(0, NK_C, BLOCK_N):
            if (start_n >= lo) & (start_n < hi):
                dq = _dq_block(dq, q, do, lse, delta, kd, vd, K, V, kbh, start_n, q_pos, q0, slope, qk_scale, NK,
                               s_kbh, s_kn, ALIBI, CAUSAL, MASK, IEEE, TMA, BLOCK_N, D)
    else:
        for start_n in tl.range(lo, hi, BLOCK_N):
            dq = _dq_block(dq, q, do, lse, delta, kd, vd, K, V, kbh, start_n, q_pos, q0, slope, qk_scale, NK,
                           s_kbh, s_kn, ALIBI, CAUSAL, MASK, IEEE, TMA, BLOCK_N, D)
    return dq


@triton.jit
def _dq_first_key(excess, q0, slope, skip_t, full, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Causal ALiBi backward, one query tile: the first key block (before `full`) with a probability that can
    reach 2^-skip_t. p_ij = 2^(s_ij - lse_i) with s_ij <= |q_i| |k|max c - slope (i - j), so with excess_i =
    |q_i| |k|max c - lse_i, keys j < i - (excess_i + skip_t) / slope are below it for row i (position i =
    q0 + r). As in the forward (`_first_needed_key`), what is skipped weighs under 2^-32 of each row."""
    r = tl.arange(0, BLOCK_M).to(tl.float32)
    cut = r - (excess + skip_t + 1.0) / tl.where(slope > 0, slope, 1.0)
    return _skip_to(cut, q0, slope, full, BLOCK_N)


@triton.jit
def _dkdv_last_query(u, n_last, OFF, NQ, slope, skip_t, full, BLOCK_M: tl.constexpr):
    """Causal ALiBi backward, one key block (last key n_last): where its query blocks can stop. Every query
    row i has |q_i| |k|max c - lse_i <= u (the head's U, from the dQ kernel), so p_ij <= 2^(u - slope (i - j))
    and rows at positions past n_last + (u + skip_t) / slope see this block below 2^-skip_t."""
    pos = slope > 0
    reach = (u + skip_t + 1.0) / tl.where(pos, slope, 1.0)
    ok = pos & (reach > -1.0e30) & (reach < 1.0e9)  # false for NaN or infinite bounds (or no limit in sight)
    last_row = tl.where(ok, n_last - OFF + tl.maximum(reach, 0.0), 1.0e9)  # the last row that can count
    hi = tl.minimum(last_row, NQ * 1.0).to(tl.int32)
    hi = (hi // BLOCK_M + 1) * BLOCK_M
    return tl.maximum(tl.minimum(hi, NQ), full)


@triton.jit
def flash_bwd_dq(qd, kd, vd, dod, Q, K, V, S, DO, OUT, L, DL, DQ, KN, QN, U, CNT, s_qbh, s_qn, s_kbh, s_kn, H, G,
            NQ, NK, OFF, qk_scale, scale, HEAD0, HR, NKN, SKIP_T,
            ALIBI: tl.constexpr, CAUSAL: tl.constexpr, SKIP: tl.constexpr, KNB: tl.constexpr, IEEE: tl.constexpr,
            TMA: tl.constexpr, COUNT: tl.constexpr, HAS_QN: tl.constexpr, INTERP: tl.constexpr,
            NQ_C: tl.constexpr, NK_C: tl.constexpr,
            D: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query block, and its rows' rowsum(dO * O) into DL. SKIP (causal ALiBi): key blocks whose
    probabilities are below 2^-SKIP_T are skipped (`_dq_first_key`), and the block's largest
    |q_i| |k|max c - lse_i goes into U[head] (atomic max; the dK/dV kernel bounds its query range by it).
    COUNT: the program adds the (BLOCK_M x BLOCK_N) tiles it computed to CNT[0]."""
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    bh, b, h = _head(HEAD0, HR, H, 1)
    kbh = b * (H // G) + h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q0 = pid_m * BLOCK_M + OFF
    q = _rows(qd, Q, bh, pid_m * BLOCK_M, NQ, s_qbh, s_qn, BLOCK_M, D, TMA)
    do = _rows(dod, DO, bh, pid_m * BLOCK_M, NQ, s_qbh, s_qn, BLOCK_M, D, TMA)
    lse = tl.load(L + bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
    # delta = rowsum(dO * O), which the dK/dV kernel (launched after this one) reads too
    o = _rows(OUT, OUT, bh, pid_m * BLOCK_M, NQ, s_qbh, s_qn, BLOCK_M, D, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DL + bh * NQ + offs_m, delta, mask=offs_m < NQ)
    slope = _slope(S, h, ALIBI)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    if CAUSAL:
        full = (q0 + 1) // BLOCK_N * BLOCK_N
        hi = tl.minimum(NK, q0 + BLOCK_M)
    else:
        full = NK
        hi = NK
    lo = 0
    if SKIP:
        qn = _reach(q, QN, bh, offs_m, NQ, qk_scale, HAS_QN)
        kn = tl.load(KN + kbh * NKN + tl.maximum(full - 1, 0) // KNB)  # bounds the norms of keys 0 .. full - 1
        lo = _dq_first_key(qn * kn - lse, q0, slope, SKIP_T, full, BLOCK_M, BLOCK_N)
        k_all = tl.load(KN + kbh * NKN + NKN - 1)  # bounds every key's norm
        tl.atomic_max(U + bh, tl.max(tl.where(offs_m < NQ, qn * k_all - lse, float("-inf")), 0))
    dq = _dq_span(dq, q, do, lse, delta, kd, vd, K, V, kbh, lo, full, q0 + tl.arange(0, BLOCK_M), q0, slope,
                  qk_scale, NK, s_kbh, s_kn, ALIBI, CAUSAL, False, IEEE, TMA, INTERP, NK_C, BLOCK_N, D)
    dq = _dq_span(dq, q, do, lse, delta, kd, vd, K, V, kbh, full, hi, q0 + tl.arange(0, BLOCK_M), q0, slope,
                  qk_scale, NK, s_kbh, s_kn, ALIBI, CAUSAL, True, IEEE, TMA, INTERP, NK_C, BLOCK_N, D)
    if COUNT:
        tl.atomic_add(CNT, (tl.cdiv(tl.maximum(full - lo, 0), BLOCK_N)
                            + tl.cdiv(tl.maximum(hi - full, 0), BLOCK_N)).to(tl.int64))
    tl.store(DQ + bh * s_qbh + offs_m[:, None] * s_qn + tl.arange(0, D)[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < NQ)
