"""Our Triton flash-attention kernel: forward and backward, causal, fused ALiBi, GQA/MQA.

FlashAttention-2 structure. Forward: one program per (query block, batch x head) streams key
blocks with an online softmax in base 2 (scores scaled by scale * log2(e), ALiBi slopes
likewise), stores the output and the row log-sum-exp. Backward: one program per (key block,
batch x query head) accumulates that head's share of dK and dV over the query blocks (the shares
of the heads in a KV group are summed afterwards, so K/V are never expanded and every head runs in
parallel); one program per (query block, batch x head) computes dQ.

Queries are the last Nq of Nk positions (offset Nk - Nq), so cached decoding works too.
ALiBi adds -slope_h * (i - j) (|i - j| when not causal); a zero slope is no bias.
Under TRITON_INTERPRET=1 the same kernels run on the CPU (small fixed blocks): that is how CI
exercises this file.
"""

from __future__ import annotations

import functools
import os

import torch

from andromeda.model.backends import register

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _kernels():
    """Compile-on-import is avoided: the kernels are defined when first needed."""
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd(Q, K, V, S, Out, L, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
             H, G, NQ, NK, OFF, qk_scale,
             ALIBI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
             NQ_C: tl.constexpr, NK_C: tl.constexpr, D: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        hk = h // G
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                    mask=offs_m[:, None] < NQ, other=0.0)  # (BLOCK_M, D)
        q_pos = offs_m + OFF
        slope = 0.0
        if ALIBI:
            slope = tl.load(S + h) * 1.4426950408889634
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        hi = NK
        if CAUSAL and not INTERP:  # skip key blocks past the causal span (the interpreter scans all: masked)
            hi = tl.minimum(NK, (pid_m + 1) * BLOCK_M + OFF)
        kbase = K + b * skb + hk * skh
        vbase = V + b * svb + hk * svh
        for start_n in range(0, NK_C if INTERP else hi, BLOCK_N):  # interpreter: Python-int bounds
            k_pos = start_n + offs_n
            kt = tl.load(kbase + k_pos[None, :] * skn + offs_d[:, None], mask=k_pos[None, :] < NK, other=0.0)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N), base 2
            else:
                s = tl.dot(q, kt) * qk_scale
            dist = (q_pos[:, None] - k_pos[None, :]).to(tl.float32)
            if ALIBI:
                if CAUSAL:
                    s = s - slope * dist
                else:
                    s = s - slope * tl.abs(dist)
            valid = k_pos[None, :] < NK
            if CAUSAL:
                valid = valid & (dist >= 0)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + k_pos[:, None] * svn + offs_d[None, :], mask=k_pos[:, None] < NK, other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(Out + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=offs_m[:, None] < NQ)
        tl.store(L + bh * NQ + offs_m, m_i + tl.log2(l_safe), mask=offs_m < NQ)

    @triton.jit
    def _bwd_dkdv(Q, K, V, S, DO, L, DL, DK, DV, sqb, sqh, sqn, skb, skh, skn, sdb, sdh, sdn, H, NQ, NK, OFF,
                  qk_scale, scale, G: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
                  INTERP: tl.constexpr, NQ_C: tl.constexpr, NK_C: tl.constexpr, D: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # Q, DO: (B, H, NQ, D), strides sq*; K, V: (B, HKV, NK, D), strides sk*;
        # DK, DV: (B, H, NK, D) per query head (strides sd*), summed over each KV group afterwards
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        hk = h // G
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        kv_mask = offs_n[:, None] < NK
        k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        lo = 0
        if CAUSAL and not INTERP:  # start at the first query block that can see this key block
            lo = tl.maximum(0, pid_n * BLOCK_N - OFF) // BLOCK_M * BLOCK_M
        slope = 0.0
        if ALIBI:
            slope = tl.load(S + h) * 1.4426950408889634
        for start_m in range(0 if INTERP else lo, NQ_C if INTERP else NQ, BLOCK_M):  # interpreter: int bounds
            m_idx = start_m + offs_m
            q_mask = m_idx[:, None] < NQ
            qo = b * sqb + h * sqh + m_idx[:, None] * sqn + offs_d[None, :]
            q = tl.load(Q + qo, mask=q_mask, other=0.0)
            do = tl.load(DO + qo, mask=q_mask, other=0.0)
            lse = tl.load(L + bh * NQ + m_idx, mask=m_idx < NQ, other=0.0)
            delta = tl.load(DL + bh * NQ + m_idx, mask=m_idx < NQ, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            else:
                s = tl.dot(q, tl.trans(k)) * qk_scale
            dist = ((m_idx + OFF)[:, None] - offs_n[None, :]).to(tl.float32)
            if ALIBI:
                if CAUSAL:
                    s = s - slope * dist
                else:
                    s = s - slope * tl.abs(dist)
            valid = (m_idx[:, None] < NQ) & (offs_n[None, :] < NK)
            if CAUSAL:
                valid = valid & (dist >= 0)
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)
            if IEEE:
                dv += tl.dot(tl.trans(p), do.to(tl.float32), input_precision="ieee")
                dp = tl.dot(do.to(tl.float32), tl.trans(v.to(tl.float32)), input_precision="ieee")
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds), q.to(tl.float32), input_precision="ieee")
            else:
                dv += tl.dot(tl.trans(p.to(do.dtype)), do)
                dp = tl.dot(do, tl.trans(v))
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        out = b * sdb + h * sdh + offs_n[:, None] * sdn + offs_d[None, :]
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _bwd_dq(Q, K, V, S, DO, L, DL, DQ, sqb, sqh, sqn, skb, skh, skn, H, G, NQ, NK, OFF, qk_scale, scale,
                ALIBI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
             NQ_C: tl.constexpr, NK_C: tl.constexpr, D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        hk = h // G
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q_mask = offs_m[:, None] < NQ
        qo = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
        q = tl.load(Q + qo, mask=q_mask, other=0.0)
        do = tl.load(DO + qo, mask=q_mask, other=0.0)
        lse = tl.load(L + bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
        delta = tl.load(DL + bh * NQ + offs_m, mask=offs_m < NQ, other=0.0)
        slope = 0.0
        if ALIBI:
            slope = tl.load(S + h) * 1.4426950408889634
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        hi = NK
        if CAUSAL and not INTERP:  # skip key blocks past the causal span (the interpreter scans all: masked)
            hi = tl.minimum(NK, (pid_m + 1) * BLOCK_M + OFF)
        for start_n in range(0, NK_C if INTERP else hi, BLOCK_N):  # interpreter: Python-int bounds
            k_pos = start_n + offs_n
            kv = b * skb + hk * skh + k_pos[:, None] * skn + offs_d[None, :]
            k = tl.load(K + kv, mask=k_pos[:, None] < NK, other=0.0)
            v = tl.load(V + kv, mask=k_pos[:, None] < NK, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            else:
                s = tl.dot(q, tl.trans(k)) * qk_scale
            dist = ((offs_m + OFF)[:, None] - k_pos[None, :]).to(tl.float32)
            if ALIBI:
                if CAUSAL:
                    s = s - slope * dist
                else:
                    s = s - slope * tl.abs(dist)
            valid = (offs_m[:, None] < NQ) & (k_pos[None, :] < NK)
            if CAUSAL:
                valid = valid & (dist >= 0)
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            if IEEE:
                dp = tl.dot(do.to(tl.float32), tl.trans(v.to(tl.float32)), input_precision="ieee")
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds, k.to(tl.float32), input_precision="ieee")
            else:
                dp = tl.dot(do, tl.trans(v))
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + qo, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)

    return _fwd, _bwd_dkdv, _bwd_dq


# Benchmarks may set these to try other launch settings (benchmarks/attention_kernels.py).
CONFIG_OVERRIDE: dict[str, dict] = {}


def _blocks(d: int, device: torch.device, backward: bool) -> dict:
    """Block sizes and launch settings: small fixed blocks in the interpreter; Hopper-sized on CUDA."""
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16)
    override = CONFIG_OVERRIDE.get("bwd" if backward else "fwd")
    if override:
        return dict(override)
    if backward:  # H100, head dim 128, 8K: 64x64/4 warps 340 TFLOP/s fwd+bwd; 8 warps only 171
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    # measured on an H100 (2026-11-24, head dim 128, 8K tokens): 64x64, 4 warps, 3 stages gave 421 TFLOP/s,
    # ahead of 128x64/8 warps (375) and 128x128/8 warps (370); see docs/performance.md
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)


def _bounds(nq: int, nk: int) -> dict:
    """Compile-time loop bounds for the interpreter only (on a GPU they would recompile per length)."""
    if _interpreting():
        return dict(INTERP=True, NQ_C=nq, NK_C=nk)
    return dict(INTERP=False, NQ_C=0, NK_C=0)


def _slopes(slopes: torch.Tensor | None, h: int, device: torch.device) -> torch.Tensor:
    if slopes is None:
        return torch.zeros(h, device=device, dtype=torch.float32)
    return slopes.to(device=device, dtype=torch.float32).contiguous()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, alibi: bool, causal: bool, scale: float):
        fwd, _, _ = _kernels()
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        out = torch.empty_like(q)
        lse = torch.empty(b, h, nq, device=q.device, dtype=torch.float32)  # base-2 log-sum-exp
        cfg = _blocks(d, q.device, backward=False)
        grid = (triton_cdiv(nq, cfg["BLOCK_M"]), b * h)
        fwd[grid](q, k, v, slopes, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                  h, h // hkv, nq, nk, nk - nq, scale * LOG2E,
                  ALIBI=alibi, CAUSAL=causal,
                  IEEE=q.dtype == torch.float32, **_bounds(nq, nk), D=d, **cfg)
        ctx.save_for_backward(q, k, v, slopes, out, lse)
        ctx.alibi, ctx.causal, ctx.scale = alibi, causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        _, dkdv, dqk = _kernels()
        q, k, v, slopes, out, lse = ctx.saved_tensors
        b, h, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, H, Nq)
        g = h // hkv
        dq = torch.empty_like(q)
        # one dK/dV slice per query head (float32 when a group must be summed), so every head runs in parallel
        part = k.dtype if g == 1 else torch.float32
        dk = torch.empty(b, h, nk, d, device=k.device, dtype=part)
        dv = torch.empty(b, h, nk, d, device=v.device, dtype=part)
        cfg = _blocks(d, q.device, backward=True)
        common = dict(ALIBI=ctx.alibi, CAUSAL=ctx.causal, IEEE=q.dtype == torch.float32, **_bounds(nq, nk),
                      D=d, **cfg)
        dkdv[(triton_cdiv(nk, cfg["BLOCK_N"]), b * h)](
            q, k, v, slopes, dout, lse, delta, dk, dv, *q.stride()[:3], *k.stride()[:3], *dk.stride()[:3],
            h, nq, nk, nk - nq, ctx.scale * LOG2E, ctx.scale, G=g, **common)
        if g > 1:  # (B, H, Nk, D) -> (B, H_kv, Nk, D): sum the heads that share each KV head
            dk = dk.view(b, hkv, g, nk, d).sum(2).to(k.dtype)
            dv = dv.view(b, hkv, g, nk, d).sum(2).to(v.dtype)
        dqk[(triton_cdiv(nq, cfg["BLOCK_M"]), b * h)](
            q, k, v, slopes, dout, lse, delta, dq, *q.stride()[:3], *k.stride()[:3],
            h, h // hkv, nq, nk, nk - nq, ctx.scale * LOG2E, ctx.scale, **common)
        return dq, dk, dv, None, None, None, None


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flash_attention(q, k, v, *, causal: bool, scale: float, alibi_slopes: torch.Tensor | None = None):
    """q (B, H, Nq, D), k/v (B, H_kv, Nk, D) -> (B, H, Nq, D)."""
    slopes = _slopes(alibi_slopes, q.shape[1], q.device)
    return _FlashAttention.apply(q, k, v, slopes, alibi_slopes is not None, causal, scale)


@register("triton")
class TritonFlashAttention:
    def supports(self, spec, device) -> str | None:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        if device.type != "cuda" and not _interpreting():
            return "the Triton kernel runs on CUDA GPUs (or on CPU under TRITON_INTERPRET=1)"
        if spec.dim_head not in (16, 32, 64, 128):
            return f"head dim {spec.dim_head} is not one of 16, 32, 64, 128"
        if spec.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {spec.dtype} is not supported (float16, bfloat16, float32)"
        return None

    def __call__(self, q, k, v, *, causal, scale, alibi_slopes):
        return flash_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)


__all__ = ["flash_attention", "TritonFlashAttention"]
