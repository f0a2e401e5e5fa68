"""The Hopper (sm90) forward of the flash-attention backend, written in Gluon (Triton's explicit-layout dialect).

Why a second forward: Triton's compiler runs one instruction stream per program, so the softmax of a tile
and the tensor-core matmuls wait for each other; on the H100 that held our Triton forward to ~0.8x cuDNN.
Here each program is three warp-specialized partitions sharing one query tile of 2 x BLOCK_M rows:

- a loader warp streams K and V blocks through TMA into a ring of STAGES shared-memory buffers
  (mbarriers `*_ready` / `*_empty` hand each buffer back and forth);
- two consumer warpgroups (4 warps each) own BLOCK_M query rows apiece. Each issues S_j = Q K_j^T for
  block j and P_{j-1} V_{j-1} for the block before, asynchronously, then computes the softmax of S_j
  while the second matmul runs (FlashAttention-3's intra-warpgroup overlap); the two warpgroups are
  independent instruction streams, so one's softmax also runs under the other's matmuls.

Semantics are the Triton forward's (triton_flash_kernels.flash_fwd): causal, queries the last of the keys
(an offset of whole tiles and key blocks),
scores in base 2, ALiBi in per-key form slope * (j - q0) with q0 the tile's first query (the stored
log-sum-exp takes the per-row constant back out), row log-sum-exp stored for the backward. Key blocks
before `LO[tile]` are skipped (causal ALiBi: triton_flash_kernels.alibi_first_block bounds them). The
host side (which shapes qualify, the launch) is in triton_flash.py. Imported only on sm90 GPUs.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def _load(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
          q_row, k_row0, j0, n_blocks, STAGES: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """Loader partition: both query halves, then key/value blocks j0 .. n_blocks through the ring."""
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + BLOCK_M, 0], q_bar, q_smem.index(1))
    for t in range(n_blocks - j0):
        s = t % STAGES
        free = ((t // STAGES) & 1) ^ 1  # a fresh barrier passes a wait on parity 1: the first lap waits for nothing
        row = k_row0 + (j0 + t) * BLOCK_N
        mbarrier.wait(k_empty.index(s), free)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row, 0], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), free)
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row, 0], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax(s, m_i, l_i, c, slope, k0, rel, MASK: gl.constexpr, ALIBI: gl.constexpr, BLOCK_N: gl.constexpr,
             layout: gl.constexpr):
    """Online-softmax step on a raw q.k block: probabilities (float32), new row maxima, rescale factor and
    row sums. k0: the block's first key relative to the tile's first query; rel: each row's query relative
    to it (keys k0 + col > rel are masked on the diagonal block)."""
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    if ALIBI:
        s = s * c + (slope * (k0 + cols).to(gl.float32))[None, :]
        if MASK:
            s = gl.where(k0 + cols[None, :] <= rel[:, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        p = gl.exp2(s - m_new[:, None])
    else:  # c > 0, so the row maximum commutes with the scale: one multiply-add a score
        if MASK:
            s = gl.where(k0 + cols[None, :] <= rel[:, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * c)
        p = gl.exp2(s * c - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    return p, m_new, alpha, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _step(s, m_i, l_i, c, slope, k0, rel, last, ALIBI: gl.constexpr, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    if last:  # the diagonal block
        p, m_i, alpha, l_i = _softmax(s, m_i, l_i, c, slope, k0, rel, True, ALIBI, BLOCK_N, layout)
    else:
        p, m_i, alpha, l_i = _softmax(s, m_i, l_i, c, slope, k0, rel, False, ALIBI, BLOCK_N, layout)
    return p, m_i, alpha, l_i


@gluon.jit
def _consume(q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, L, q_row, lse_row,
             j0, n_blocks, q0, c, slope, WG: gl.constexpr, ALIBI: gl.constexpr, STAGES: gl.constexpr,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr):
    """Consumer warpgroup WG: query rows WG * BLOCK_M .. of the tile against key blocks j0 .. n_blocks."""
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    rows_l: gl.constexpr = gl.SliceLayout(1, s_l)
    dtype: gl.constexpr = k_smem.dtype
    qs = q_smem.index(WG)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_l)
    acc = gl.zeros([BLOCK_M, D], gl.float32, o_l)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_l)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows_l)
    rel = WG * BLOCK_M + gl.arange(0, BLOCK_M, layout=rows_l)  # query - q0
    nt = n_blocks - j0

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_ready.index(0), 0)
    tok = warpgroup_mma(qs, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(tok,))
    mbarrier.arrive(k_empty.index(0))
    pf, m_i, alpha, l_i = _step(s, m_i, l_i, c, slope, j0 * BLOCK_N - q0, rel, nt == 1, ALIBI, BLOCK_N, s_l)
    p = gl.convert_layout(pf.to(dtype), p_l)
    for t in range(1, nt):
        st = t % STAGES
        sp = (t - 1) % STAGES
        mbarrier.wait(k_ready.index(st), (t // STAGES) & 1)
        mbarrier.wait(v_ready.index(sp), ((t - 1) // STAGES) & 1)
        s_tok = warpgroup_mma(qs, k_smem.index(st).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        acc_tok = warpgroup_mma(p, v_smem.index(sp), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s_tok,))  # S_t is in; P_{t-1} V_{t-1} may still be running
        mbarrier.arrive(k_empty.index(st))
        pf, m_new, alpha, l_i = _step(s, m_i, l_i, c, slope, (j0 + t) * BLOCK_N - q0, rel, t == nt - 1, ALIBI,
                                      BLOCK_N, s_l)
        acc, p = warpgroup_mma_wait(0, deps=(acc_tok, p))
        mbarrier.arrive(v_empty.index(sp))
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_l))[:, None]
        p = gl.convert_layout(pf.to(dtype), p_l)
        m_i = m_new
    sl = (nt - 1) % STAGES
    mbarrier.wait(v_ready.index(sl), ((nt - 1) // STAGES) & 1)
    acc_tok = warpgroup_mma(p, v_smem.index(sl), acc, is_async=True)
    acc, p = warpgroup_mma_wait(0, deps=(acc_tok, p))
    mbarrier.arrive(v_empty.index(sl))

    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_l))[:, None]
    qs.store(out.to(dtype))  # this warpgroup's query buffer is free: stage the output there
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [q_row + WG * BLOCK_M, 0], qs)
    lse = m_i + gl.log2(l_i)
    if ALIBI:  # back to the -slope * (i - j) form the backward recomputes
        lse = lse - slope * rel.to(gl.float32)
    gl.store(L + lse_row + rel, lse)
    tma.store_wait(0)


@gluon.jit
def flash_fwd_sm90(q_desc, k_desc, v_desc, o_desc, S, LO, L, NQ, NK, OFF, H, G, c, HEAD0, HR,
                   ALIBI: gl.constexpr, SKIP: gl.constexpr, STAGES: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, D: gl.constexpr, LOADER_REGS: gl.constexpr,
                   CONSUMER_REGS: gl.constexpr):
    """Causal forward over (B*H*NQ, D) / (B*H_kv*NK, D) row views, the queries at positions OFF .. OFF + NQ - 1
    of the keys (OFF a multiple of the tile and of BLOCK_N, so a tile's last key block is its one diagonal
    block, as at OFF = 0); grid (NQ / (2 BLOCK_M), B * HR) for heads HEAD0 .. HEAD0 + HR. LO (B*H, NQ /
    (2 BLOCK_M)) int32: each tile's first key block (SKIP only)."""
    TILE: gl.constexpr = 2 * BLOCK_M
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)  # longest causal rows first: a shorter tail
    i = gl.program_id(1)
    b = i // HR
    h = HEAD0 + i % HR
    bh = b * H + h
    kbh = b * (H // G) + h // G
    q0 = pid_m * TILE + OFF  # the position of the tile's first query
    q_row = bh * NQ + pid_m * TILE
    n_blocks = (q0 + TILE) // BLOCK_N
    j0 = 0
    if SKIP:
        j0 = gl.load(LO + bh * gl.num_programs(0) + pid_m)
    slope = 0.0
    if ALIBI:
        slope = gl.load(S + h) * 1.4426950408889634

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_M, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=2)  # both consumer warpgroups release a buffer
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(v_empty.index(s), count=2)
    fence_async_shared()

    gl.warp_specialize([  # (constexpr arguments must be written out in each tuple)
        (_consume, (q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, L, q_row, q_row,
                    j0, n_blocks, q0, c, slope, 0, ALIBI, STAGES, BLOCK_M, BLOCK_N, D)),
        (_consume, (q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, L, q_row, q_row,
                    j0, n_blocks, q0, c, slope, 1, ALIBI, STAGES, BLOCK_M, BLOCK_N, D)),
        (_load, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, k_empty, v_ready, v_empty,
                 q_row, kbh * NK, j0, n_blocks, STAGES, BLOCK_M, BLOCK_N)),
    ], [4, 1], [CONSUMER_REGS, LOADER_REGS])
