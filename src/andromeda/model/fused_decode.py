"""The batch-1 decode step in fused Triton kernels (model/decode_kernels.py), for StaticStep's shapes.

A decode step at batch 1 streams every weight once; the torch step (model/decode.py) does that in
cuBLAS GEMVs but spends as long again on ~1,500 small kernels (norms, token shift, QK-norm, rotary,
cache writes, masks, softmax) and the gaps between them. FusedStep computes the same logits in six
kernels a layer (decode_kernels.py lists them) plus the embedding and the LM head (final norm inside),
reading the model's own parameters and StaticStep's state: the position `pos` on the device, the
rotary/xPos tables, the token-shift buffers and the KV cache. It captures into a CUDA graph like the
torch step (GraphedDecoder(kernels="triton")).

It covers the configurations a batch-1 decode of an Andromeda preset needs: pre-norm blocks (not
DeepNorm or parallel), LayerNorm or RMSNorm, token shift, MHA/GQA/MQA, QK-norm with or without dim
scale, rotary with or without xPos, ALiBi, plain or GLU feed-forwards, float32/bf16/fp16 weights with a
cache of the same dtype. `unsupported()` names what else it refuses; GraphedDecoder(kernels="auto") then
uses the torch step. On CPU it runs under TRITON_INTERPRET=1 (how CI tests it).

Its tuning (GEMV launch settings, programmatic dependent launch, how early the out-projection and w_in start) is
DecodeTuning in backends/settings.py, read from the active settings, backends.tuning(DecodeTuning).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from andromeda.errors import UnsupportedError
from andromeda.model.backends.settings import DecodeTuning, tuning
from andromeda.model.backends.triton_flash import LOG2E, _interpreting
from andromeda.model.positional import xpos_period

ACT = {"gelu": 1, "silu": 2, "relu": 3}


@functools.lru_cache(maxsize=1)
def _kernels():
    """The jitted kernels, imported on first use (Triton is optional)."""
    from andromeda.model import decode_kernels

    return decode_kernels


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _block_t(device: torch.device) -> int:
    """Keys per tile of the attention split kernel."""
    return 64 if device.type == "cuda" else 16


def split_blocks(blocks: int, tune: DecodeTuning) -> int:
    """Key blocks per attention program for a cache of `blocks` blocks: as few as keep the programs at or under
    tune.splits, but at most tune.split_tiles (more programs instead), and as many as keep the programs at or
    under tune.max_splits."""
    return max(-(-blocks // tune.max_splits), min(-(-blocks // tune.splits), tune.split_tiles))


def unsupported(model, cache) -> str | None:
    """Why the fused step cannot run this model and cache, or None when it can."""
    cfg = model.cfg
    device = cache.k.device if cache.bits is None else cache.kq.device
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    if device.type != "cuda" and not _interpreting():
        return "the fused kernels run on CUDA GPUs (or on CPU under TRITON_INTERPRET=1)"
    if model.training:
        return "the model is in training mode (dropout); call model.eval()"
    if cache.bits is not None:
        return f"the cache is quantized (quant='{cache.quant}')"
    if cache.k.shape[1] != 1:
        return f"batch {cache.k.shape[1]}: the fused step is for batch 1"
    dtype = model.head.weight.dtype
    if cache.dtype != dtype:
        return f"the cache dtype {cache.dtype} differs from the model's {dtype}"
    if cfg.deepnorm or cfg.parallel_block:
        return "DeepNorm and parallel blocks are not fused (pre-norm blocks only)"
    d = cfg.dim_head
    if d < 16 or d & (d - 1):
        return f"dim_head {d} is not a power of two >= 16"
    if model.head.bias is not None:
        return "the LM head has a bias"
    if cfg.ff_activation not in ACT:
        return f"ff activation '{cfg.ff_activation}' is not fused"
    if cfg.use_rotary and cfg.rot_dim % 2:
        return f"rotary dim {cfg.rot_dim} is odd"
    if cfg.use_rotary and cfg.rotary_xpos:
        period, tile = xpos_period(cfg.xpos_scale_base, cfg.pos_interpolation_factor, dtype), _block_t(device)
        several = cache.start // period != (cache.start + cache.max_len - 1) // period
        if several and (period % tile or cache.start % tile):
            return (f"the cache spans several xPos anchor blocks of {period} positions, not a multiple of the "
                    f"kernel's {tile}-key tiles (or starts off a tile)")
    linears = [model.head] + [m for b in model.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    if any(lin.weight.stride(-1) != 1 for lin in linears):
        return "a weight's rows are not contiguous"
    norms = [model.final_norm] + [n for b in model.blocks for n in (b.attn_norm, b.ff_norm)]
    if not all(isinstance(n, (nn.LayerNorm, nn.RMSNorm)) and n.weight is not None for n in norms):
        return "a norm is neither an affine LayerNorm nor an RMSNorm with weight"
    return None


def gemv_config(n: int, k: int, interp: bool, normed: bool = False) -> dict:
    """Launch settings of an n x k GEMV (normed: it normalizes its input), or the active DecodeTuning's
    (gemv_by_shape's for this shape, else gemv).

    H100, bf16, each of the `andromeda` preset's shapes (benchmarks/decode_kernels.py --sweep, 2026-11-24):
    four or eight rows a program, K in chunks of up to 1024. A GEMV that normalizes its input and has at
    least 2K rows (w_in, w_gate, the LM head) takes 16 rows a program in chunks of 256, which spreads
    each program's norm work over more weight bytes: side by side on the 2.5B preset, 2.124 ms/token
    against 2.160 for w_in, then 2.109 against 2.120 for the LM head. (q|k|v, 1.3K rows, lost with it.)
    """
    tune = tuning(DecodeTuning)
    over = tune.gemv_by_shape.get((n, k)) or tune.gemv
    if over:
        return dict(over)
    if interp:
        return dict(BLOCK_N=16, BLOCK_K=32, num_warps=1, num_stages=1)
    if k >= 8192:
        return dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8, num_stages=1)
    if normed and n >= 2 * k:
        return dict(BLOCK_N=16, BLOCK_K=256, num_warps=4, num_stages=1)
    return dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4, num_stages=1)


class Norm:
    """A GEMV's input normalization: `module` (nn.LayerNorm | nn.RMSNorm) of x, then token shift from
    `state` (1, s, dim) (None: no shift), the normalized row stored to `new` for a later state update."""

    def __init__(self, module: nn.Module, state: torch.Tensor | None = None, new: torch.Tensor | None = None):
        self.module, self.state, self.new = module, state, new


def gemv(x: torch.Tensor, out: torch.Tensor, lins: list, *, act: int = 0, res: torch.Tensor | None = None,
         mul: torch.Tensor | None = None, norm: Norm | None = None,
         update: tuple[torch.Tensor, torch.Tensor] | None = None, argmax: tuple | None = None,
         pre: int = 1, early_next: bool = False, interp: bool = False, pdl: bool = False) -> None:
    """out = epilogue(W in) for the weights of up to three nn.Linear-like objects stacked (decode_kernels.gemv_kernel).

    x (K,), out (sum of the weights' rows,); act: 0 none, 1 gelu, 2 silu, 3 relu; res, mul: (rows,).
    in = x, or norm(x) shifted (`norm`). update = (state (1, s, dim), row (dim,)): move row into the shift
    state first (the state's rows up one, row last). argmax = (key int64 (1,) holding -2**63, counter int32
    (1,) holding 0, token int64): also write the index of the largest output to token (one weight).
    pre (1-4): K tiles each program loads before waiting for the previous kernel (no more than cover K).
    early_next: under PDL let the next kernel launch before this one's wait, not after it."""
    ws = [lin.weight for lin in lins]
    bs = [lin.bias for lin in lins]
    k = ws[0].shape[1]
    cfg = gemv_config(sum(w.shape[0] for w in ws), k, interp, normed=norm is not None)
    bn = cfg["BLOCK_N"]
    empty = x.new_empty(0)
    pad = 3 - len(ws)
    wp = ws + [ws[0]] * pad
    bp = [empty if b is None else b for b in bs] + [empty] * pad
    ns = [w.shape[0] for w in ws] + [0] * pad
    kind, nw, nb, eps, state, new, shifts = 0, empty, empty, 0.0, empty, empty, 0
    if norm is not None:
        mod = norm.module
        kind, nw = (2 if isinstance(mod, nn.RMSNorm) else 1), mod.weight
        eps = float(mod.eps if mod.eps is not None else torch.finfo(x.dtype).eps)  # RMSNorm(eps=None): torch's default
        nb = mod.bias if kind == 1 and mod.bias is not None else empty
        if norm.state is not None:
            state, new, shifts = norm.state, norm.new, norm.state.shape[1]
    upd, upd_new, upd_shifts = (update[0], update[1], update[0].shape[1]) if update is not None else (empty, empty, 0)
    upd_dim = upd.shape[-1] if update is not None else 1
    launch = dict(launch_pdl=True) if pdl else {}
    arg = argmax if argmax is not None else (empty, empty, empty)
    _kernels().gemv_kernel[(sum(-(-w.shape[0] // bn) for w in ws),)](
        x, out, *wp, *bp, empty if res is None else res, empty if mul is None else mul, nw, nb, state, new,
        upd, upd_new, *arg, *ns, *[w.stride(0) for w in wp], k // (shifts + 1), eps, upd_dim, K=k, SEGMENTS=len(ws),
        HAS_BIAS=bs[0] is not None, ACT=act, HAS_RES=res is not None, HAS_MUL=mul is not None, NORM=kind,
        HAS_NB=nb.numel() > 0, SHIFTS=shifts, UPD_SHIFTS=upd_shifts, EVEN_K=k % cfg["BLOCK_K"] == 0,
        BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], KB=_pow2(k), UB=_pow2(upd_dim), ARGMAX=argmax is not None,
        PRE=max(1, min(pre, 4, -(-k // cfg["BLOCK_K"]))), EARLY_NEXT=early_next, PDL=pdl,
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1), **launch)


class FusedStep:
    """StaticStep.forward_static in fused Triton kernels: token (1, 1) -> logits (1, V) at `pos`.

    Writes the KV cache and the token-shift state at `pos` and advances `pos`, exactly as the torch
    step does. The logits are a view of a buffer the next step overwrites.
    """

    def __init__(self, static):
        model, cache = static.model, static.cache
        if (why := unsupported(model, cache)) is not None:
            raise UnsupportedError(f"decode.kernels: the fused Triton step cannot run here: {why}")
        self.static, self.model, self.cache = static, model, cache
        cfg = model.cfg
        self.k = _kernels()
        device, dtype = cache.k.device, model.head.weight.dtype
        self.h, self.hkv, self.d = cfg.heads, cfg.n_kv_heads, cfg.dim_head
        self.g = self.h // self.hkv
        self.rot = cfg.rot_dim if cfg.use_rotary else 0
        self.interp = device.type != "cuda"

        def buf(n):
            return torch.empty(n, device=device, dtype=dtype)

        self.x, self.ynew = buf(cfg.dim), buf(cfg.dim)  # the residual stream; a norm's row for the shift state
        self.qkv, self.o = buf((self.h + 2 * self.hkv) * self.d), buf(self.h * self.d)
        self.ff = buf(cfg.ff_hidden)
        self.ff2 = buf(cfg.ff_hidden) if cfg.ff_glu else None
        self.logits = buf(cfg.num_tokens)
        # greedy decoding in the LM head: the packed (logit, row) maximum, a finished-program count, the token
        self.argmax = (torch.full((1,), -(2**63), device=device, dtype=torch.int64),
                       torch.zeros(1, device=device, dtype=torch.int32),
                       torch.zeros(1, 1, device=device, dtype=torch.long))
        # attention splits: runs of whole key blocks, as DecodeTuning's splits, split_tiles and max_splits set
        t = cache.max_len
        self.block_t = _block_t(device)
        self.split_t = split_blocks(-(-t // self.block_t), tuning(DecodeTuning)) * self.block_t
        self.n_split = -(-t // self.split_t)
        self.bg = max(16, _pow2(self.g))
        ws = self.hkv * self.n_split * self.bg
        self.mw = torch.empty(ws, device=device, dtype=torch.float32)
        self.lw = torch.empty(ws, device=device, dtype=torch.float32)
        self.ow = torch.empty(ws * self.d, device=device, dtype=torch.float32)
        self.prec = "ieee" if dtype == torch.float32 else "tf32"  # (tf32 is ignored for half inputs)
        self.qk_scale = cfg.attn_scale * LOG2E
        self.empty = torch.empty(0, device=device, dtype=dtype)  # the pointer argument of an absent tensor
        self.slopes = model.alibi_slopes
        # xPos over several anchor blocks (positional.XPos): the query takes each key tile's block factor
        # zeta^((b(pos) - b) P / base) = 2^(k * LSTEP), LSTEP the log2 of one block's step per rotated feature
        self.anchored = len(static.blocks) > 1
        self.lstep = (static.tables[2].log_step * LOG2E).float() if self.anchored else self.empty
        has_pdl = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
        pdl = tuning(DecodeTuning).pdl
        self.pdl = has_pdl if pdl is None else bool(pdl) and has_pdl
        self.launch = dict(PDL=self.pdl, launch_pdl=self.pdl) if self.pdl else dict(PDL=False)

    # ---- launches ---------------------------------------------------------------------------------
    def _gemv(self, x, out, lins, **kw) -> None:
        gemv(x, out, lins, interp=self.interp, pdl=self.pdl, **kw)

    def _attention(self, layer: int, attn) -> None:
        st, kn = self.static, self.k
        kc, vc = self.cache.k[layer, 0], self.cache.v[layer, 0]  # (H_kv, T, D)
        cos, sin, xpos = st.tables if st.tables is not None else (self.empty, self.empty, None)
        xs = None if xpos is None else xpos.scale
        qn = attn.q_norm
        gq = qn.gain if qn is not None and qn.gain is not None else None
        gk = attn.k_norm.gain if gq is not None else None
        slopes = self.slopes
        warps = 1 if self.interp else 4
        kn.attn_split_kernel[(self.n_split, self.hkv)](
            self.qkv, kc, vc, st.pos, self.empty if slopes is None else slopes, self.empty if gq is None else gq,
            self.empty if gk is None else gk, cos, sin, self.empty if xs is None else xs, self.mw, self.lw, self.ow,
            self.qk_scale, float(qn.eps if qn is not None else 0.0), self.h, self.hkv, self.g, kc.stride(0),
            N_SPLIT=self.n_split, SPLIT_T=self.split_t, BLOCK_T=self.block_t, BG=self.bg, D=self.d, ROT=self.rot,
            QK_NORM=qn is not None, GAIN=gq is not None, XPOS=xs is not None, ALIBI=slopes is not None,
            PREC=self.prec, LSTEP=self.lstep, START=self.cache.start, PERIOD=st.period, ANCHORED=self.anchored,
            num_warps=warps, **self.launch)
        kn.attn_combine_kernel[(self.h,)](
            self.mw, self.lw, self.ow, self.o, st.pos, self.g, N_SPLIT=self.n_split, SPLIT_T=self.split_t,
            BG=self.bg, BLOCK_S=min(128, _pow2(self.n_split)), D=self.d, EARLY_NEXT=tuning(DecodeTuning).early_out,
            num_warps=1 if self.interp else 8, **self.launch)

    # ---- the step ---------------------------------------------------------------------------------
    def forward_static(self, token: torch.Tensor) -> torch.Tensor:
        return self._forward(token, greedy=False)

    def forward_greedy(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward_static and the argmax of the logits (1, 1), taken inside the LM head's kernel."""
        return self._forward(token, greedy=True), self.argmax[2]

    def _forward(self, token: torch.Tensor, greedy: bool) -> torch.Tensor:
        st, m = self.static, self.model
        shift = st.shift
        start = self.cache.start
        self.x.copy_(m.emb_drop(m.embed(token, st.pos + start if start else st.pos)).reshape(-1))
        act = ACT[m.cfg.ff_activation]
        tune = tuning(DecodeTuning)
        for i, blk in enumerate(m.blocks):
            at, ff = blk.attn, blk.ff
            state = shift.get((i, "attn"))
            self._gemv(self.x, self.qkv, [at.to_q, at.to_k, at.to_v], norm=Norm(blk.attn_norm, state, self.ynew))
            self._attention(i, at)
            self._gemv(self.o, self.x, [at.to_out], res=self.x, update=None if state is None else (state, self.ynew),
                       pre=tune.out_pre, early_next=tune.early_in)
            state = shift.get((i, "ff"))
            norm = Norm(blk.ff_norm, state, self.ynew)
            self._gemv(self.x, self.ff, [ff.w_in], act=act, norm=norm)
            h = self.ff
            if ff.w_gate is not None:
                self._gemv(self.x, self.ff2, [ff.w_gate], mul=self.ff, norm=norm)
                h = self.ff2
            self._gemv(h, self.x, [ff.w_out], res=self.x, update=None if state is None else (state, self.ynew))
        self._gemv(self.x, self.logits, [m.head], norm=Norm(m.final_norm), argmax=self.argmax if greedy else None)
        st.pos.add_(1)
        return self.logits.view(1, -1)
