"""Static-shape single-token decoding over the full-precision KV cache, and a CUDA graph of it.

`model(token, cache=cache)` slices the cache to its filled length, so every step has a new shape and
reads the position from Python: it cannot be captured. `StaticStep` computes the same logits with
shapes fixed by the cache's max_len and the position held in a device tensor `pos` (1,):

- embeddings and rotary/xPos rows come from `pos` (the rotary tables of every cache position are
  built once by the model's own `rope()` and indexed on the device). With xPos over a cache of several
  anchor blocks (positional.XPos), the query meets each earlier block's keys with its own factor
  zeta^((b - b') P / base), a (blocks, rot_dim) table computed from `pos` on the device;
- each layer writes k, v at `pos` (index_copy_) and attends over the WHOLE buffer, keys past `pos`
  masked with -inf, ALiBi -slope * (pos - j) on the heads with a slope. MQA/GQA folds the H / H_kv
  query heads of a KV head into the query rows of one attention call, so K/V are never expanded;
- token-shift state is copied into the cache's buffers in place;
- `pos` advances on the device; the Python-side cache.length advances outside the step.

`GraphedDecoder` captures one such step into a torch.cuda.CUDAGraph (static token in, logits out)
and replays it; on CPU it runs the same step eagerly, so the logic is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model.cache import KVCache
from andromeda.model.positional import scale_rotated

# the masked attention of a step: "matmul" (batched matmuls, float32 scores and softmax; cuBLAS spreads one
# sequence's keys over the GPU) or "sdpa" (one fused call with an additive mask; its memory-efficient kernel
# runs one block per (sequence, KV head), which a single sequence with one KV head leaves mostly idle)
ATTENTION = ("matmul", "sdpa")
_ALIGN = 16  # the key axis of the mask is padded to this, which SDPA's memory-efficient kernel wants


class StaticStep:
    """One decode step at the cache's current position, with static shapes and no host sync.

    Calling it takes tokens (B, 1) and returns logits (B, V) of the last (only) position, exactly what
    `model(token, cache=cache, logits="last")[:, -1]` computes, then advances `pos` and cache.length.
    `forward_static` is the capturable body: it advances `pos` but touches no Python state.
    `attention`: "matmul" (batched matmuls, float32 scores) or "sdpa" (one fused call with an additive mask;
    a cache over several xPos anchor blocks takes the matmul path).
    """

    def __init__(self, model, cache: KVCache, *, pos: torch.Tensor | None = None, attention: str = "matmul"):
        if cache.bits is not None:
            raise UnsupportedError(f"decode: the static decode step needs a full-precision KV cache "
                                   f"(quant='none'), not quant='{cache.quant}'")
        if attention not in ATTENTION:
            raise ConfigError(f"decode.attention: '{attention}' is unknown; allowed: {', '.join(ATTENTION)}")
        cfg = model.cfg
        self.model, self.cache, self.attention = model, cache, attention
        device = cache.k.device
        self.batch, self.max_len = cache.k.shape[1], cache.max_len
        self.dtype = model.head.weight.dtype  # the hidden states' dtype
        with torch.inference_mode():
            if pos is None:
                pos = torch.full((1,), cache.length, dtype=torch.long, device=device)
            self.pos = pos  # (1,) the position the next step writes
            # cos, sin (T, rot_dim) and the XPos of every cache slot's position, or None
            self.tables = model.rope(cache.start, self.max_len, device, cache.dtype)
            xpos = None if self.tables is None else self.tables[2]
            self.period = xpos.period if xpos is not None else 0
            # the anchor blocks the cache's slots touch; their first slot each (xPos only)
            self.blocks = xpos.blocks() if xpos is not None else []
            # their block numbers, on the device once: a captured step copies nothing from the host
            self._block_ids = torch.tensor([blk for _, _, blk in self.blocks], device=device)
            self._qfac: torch.Tensor | None = None
            t_pad = -(-self.max_len // _ALIGN) * _ALIGN
            self.key_pos = torch.arange(t_pad, device=device)  # (T_pad,)
            hkv = cfg.n_kv_heads
            slopes = model.alibi_slopes
            # (H_kv, G, 1): head h = kv * G + g, the grouping repeat_interleave gives the reference backends
            self.slopes = None if slopes is None else slopes.float().view(hkv, cfg.heads // hkv, 1)
        # the cache's shift-state buffers, allocated (zeros) outside inference mode: a prefill may write them
        self.shift: dict[tuple[int, str], torch.Tensor] = {}
        if cfg.shift_tokens:
            like = torch.zeros(self.batch, cfg.shift_tokens, cfg.dim, dtype=self.dtype, device=device)
            sites = ("attn",) if cfg.parallel_block else ("attn", "ff")
            for layer in range(cfg.depth):
                for site in sites:
                    self.shift[(layer, site)] = cache.shift_buffer(layer, site, like)
        self._bmm_to_f32 = _bmm_to_f32(device, self.dtype)
        self._synced = cache.length  # the cache.length that `pos` holds
        self._bias: torch.Tensor | None = None

    # ---- what the blocks call, in place of a KVCache -------------------------------------------
    def shift_state(self, layer: int, site: str) -> torch.Tensor:
        return self.shift[(layer, site)]

    def set_shift_state(self, layer: int, site: str, state: torch.Tensor) -> None:
        self.shift[(layer, site)].copy_(state)  # in place: a captured graph holds this buffer

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q (B, H, 1, D), this position's k, v (B, H_kv, 1, D) -> (B, H, 1, D) over the whole cache."""
        keys, vals = self.cache.write_at(layer, self.pos, k, v)  # (B, H_kv, T, D)
        b, h, _, d = q.shape
        hkv, t = keys.shape[1], keys.shape[2]
        g = h // hkv
        qg = q.reshape(b, hkv, g, d)  # (B, H_kv, G, D): a KV head's G query heads as G query rows
        bias = self._bias  # (1, H_kv | 1, G | 1, T)
        if self.attention == "sdpa" and self._qfac is None:  # (several xPos anchor blocks: the matmul path)
            out = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=bias, scale=scale)  # (B, H_kv, G, D)
            return out.reshape(b, h, 1, d)
        q3, k3, v3 = qg.reshape(b * hkv, g, d), keys.reshape(b * hkv, t, d), vals.reshape(b * hkv, t, d)
        if self._qfac is None:
            s = self._scores(q3, k3)
        else:  # each anchor block's keys against the query with that block's factor
            s = torch.cat([self._scores(scale_rotated(q3, self._qfac[i]), k3[:, a:e])
                           for i, (a, e, _) in enumerate(self.blocks)], dim=-1)
        scores = torch.add(bias, s.view(b, hkv, g, t), alpha=scale)  # (B, H_kv, G, T) float32
        probs = scores.softmax(dim=-1).to(v3.dtype).view(b * hkv, g, t)
        return torch.bmm(probs, v3).to(q.dtype).reshape(b, h, 1, d)  # (B*H_kv, G, D) -> (B, H, 1, D)

    def _scores(self, q3: torch.Tensor, k3: torch.Tensor) -> torch.Tensor:
        """q3 (B H_kv, G, D) . k3 (B H_kv, T, D) -> (B H_kv, G, T) float32."""
        if q3.dtype == k3.dtype == torch.float32:
            return torch.bmm(q3, k3.transpose(1, 2))
        if q3.dtype == k3.dtype and self._bmm_to_f32:  # half inputs, float32 accumulate and output
            return torch.bmm(q3, k3.transpose(1, 2), out_dtype=torch.float32)
        return torch.bmm(q3.float(), k3.float().transpose(1, 2))

    def query_factors(self) -> torch.Tensor | None:
        """(blocks, rot_dim) float32 xPos factors zeta^(max(b(pos) - b', 0) P / base) of the query at `pos` against
        each anchor block b' of the cache (blocks past pos hold masked keys only: factor 1), or None for one block."""
        if len(self.blocks) < 2:
            return None
        xpos = self.tables[2]
        mine = (self.pos + self.cache.start) // self.period  # (1,) on the device
        return xpos.step((mine - self._block_ids).clamp(min=0))

    # ---- the step ---------------------------------------------------------------------------------
    def step_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(1, H_kv | 1, G | 1, T) additive bias at `pos`: -slope * (pos - j), -inf on keys j > pos.

        Built over the padded key axis and cut afterwards, so its rows keep an aligned stride.
        """
        dist = (self.pos - self.key_pos).float()  # (T_pad,) i - j
        # (H_kv | 1, G | 1, T_pad)
        bias = torch.zeros_like(dist)[None, None] if self.slopes is None else -self.slopes * dist
        bias = bias.masked_fill(dist < 0, float("-inf")).to(dtype)
        return bias[None, ..., : self.max_len]

    def forward_static(self, token: torch.Tensor) -> torch.Tensor:
        """token (B, 1) -> logits (B, V) at `pos`; writes the cache at `pos` and advances `pos` by one."""
        m = self.model
        pos = self.pos
        x = m.emb_drop(m.embed(token, pos + self.cache.start if self.cache.start else pos))  # (B, 1, dim)
        rope = None
        if self.tables is not None:
            cos, sin, xpos = self.tables
            if xpos is not None:  # this position's row (the attention applies the blocks' factors itself)
                xpos = replace(xpos, scale=xpos.scale.index_select(0, pos), inv=xpos.inv.index_select(0, pos))
            rope = (cos.index_select(0, pos), sin.index_select(0, pos), xpos)  # (1, rot_dim) rows
        self._bias = self.step_bias(x.dtype if self.attention == "sdpa" else torch.float32)  # one for all layers
        self._qfac = self.query_factors()
        for i, blk in enumerate(m.blocks):
            x = blk(x, rope, m.alibi_slopes, self, i)
        self._bias = self._qfac = None
        logits = m.head(m.final_norm(x))[:, -1]  # (B, V)
        pos.add_(1)
        return logits

    def check(self, token: torch.Tensor) -> None:
        """Refuse a step the cache or the config cannot hold (Python ints only: no device sync)."""
        if tuple(token.shape) != (self.batch, 1):
            raise ConfigError(f"decode: token must be (batch, 1) = ({self.batch}, 1), got {tuple(token.shape)}")
        n = self.cache.length
        if n >= self.max_len:
            raise ConfigError(f"cache: position {n} is past the cache's max_len {self.max_len}; make a larger cache")
        self.model.check_positions(self.cache.position)

    def sync(self) -> None:
        """Point `pos` at cache.length when something else (a prefill, a reset) has moved the cache."""
        if self.cache.length != self._synced:
            self.pos.fill_(self.cache.length)
            self._synced = self.cache.length

    def advance(self) -> None:
        self.cache.advance(1)
        self._synced = self.cache.length

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        self.check(token)
        with torch.inference_mode():
            self.sync()
            logits = self.forward_static(token)
        self.advance()
        return logits


def _bmm_to_f32(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch.bmm takes `dtype` inputs to a float32 result here (out_dtype; cuBLAS on CUDA)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        a = torch.ones(1, 2, 8, device=device, dtype=dtype)
        return torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def decode_step(model, token: torch.Tensor, pos: torch.Tensor, cache: KVCache, *,
                attention: str = "matmul") -> torch.Tensor:
    """One static-shape step at device position `pos` (1,), which must hold cache.length: logits (B, V).

    Advances `pos` on the device and cache.length in Python. Builds the rotary tables on each call;
    a loop should keep one StaticStep (or a GraphedDecoder) instead.
    """
    step = StaticStep(model, cache, pos=pos, attention=attention)
    step.check(token)
    with torch.inference_mode():
        logits = step.forward_static(token)
    step.advance()
    return logits


KERNELS = ("auto", "torch", "triton")


def _choose_kernels(model, cache: KVCache, kernels: str, compile: bool) -> tuple[str, str]:
    """(the step's kernels, why) for GraphedDecoder's `kernels` argument."""
    if kernels == "torch":
        return "torch", "asked for"
    if kernels == "triton":
        if compile:
            raise ConfigError("decode.kernels: 'triton' runs its own fused kernels; it takes compile=False")
        return "triton", "asked for"
    if compile:
        return "torch", "compile=True compiles the torch step"
    if cache.k.device.type != "cuda":
        return "torch", "the fused kernels are for CUDA caches"
    from andromeda.model.fused_decode import unsupported

    why = unsupported(model, cache)
    return ("torch", why) if why else ("triton", "fused kernels run this model")


class GraphedDecoder:
    """Batch decoding through one captured CUDA graph of StaticStep (eagerly on a CPU cache).

    step(token (B, 1)) -> logits (B, V), or (logits, next token (B, 1)) with greedy=True, where the
    argmax runs inside the graph. The cache may be prefilled before or after construction: the
    device position follows cache.length. Warm-up and capture leave the cache's contents as they were.
    compile=True runs the step through torch.compile (fullgraph, static shapes) before the capture, to
    fuse its many small kernels; the first warm-up step pays the compilation.
    kernels: "torch" (StaticStep's modules and matmuls), "triton" (model/fused_decode.py: six fused
    kernels a layer; batch 1, pre-norm blocks; an error names what it cannot run) or "auto": triton on a
    CUDA cache where it can run and compile is off, torch otherwise (`kernels_reason` says why).
    """

    def __init__(self, model, cache: KVCache, *, greedy: bool = False, attention: str = "matmul",
                 warmup: int = 3, graph: bool | None = None, compile: bool = False, kernels: str = "auto"):
        if kernels not in KERNELS:
            raise ConfigError(f"decode.kernels: '{kernels}' is unknown; allowed: {', '.join(KERNELS)}")
        self.model, self.cache, self.greedy = model, cache, greedy
        self.static = StaticStep(model, cache, attention=attention)
        self.kernels, self.kernels_reason = _choose_kernels(model, cache, kernels, compile)
        self._fused = None
        if self.kernels == "triton":
            from andromeda.model.fused_decode import FusedStep

            self._fused = FusedStep(self.static)
            fn = self._fused.forward_static
        else:
            fn = self.static.forward_static
        self._step = torch.compile(fn, fullgraph=True, dynamic=False) if compile else fn
        on_cuda = cache.k.device.type == "cuda"
        self.graphed = on_cuda if graph is None else graph
        if self.graphed and not on_cuda:
            raise UnsupportedError(f"decode: a CUDA graph needs a CUDA cache, this one is on {cache.k.device}")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.token: torch.Tensor | None = None
        self.out: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if self.graphed:
            self._capture(max(1, warmup))

    def _body(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._fused is not None and self.greedy:  # the argmax inside the LM head's kernel
            return self._fused.forward_greedy(token)
        logits = self._step(token)  # (B, V)
        return logits, (logits.argmax(dim=-1, keepdim=True) if self.greedy else None)

    def _capture(self, warmup: int) -> None:
        cache, st = self.cache, self.static
        device = cache.k.device
        p = min(cache.length, cache.max_len - 1)  # warm-up writes here; its contents are restored after
        with torch.inference_mode():
            saved = [cache.k[:, :, :, p].clone(), cache.v[:, :, :, p].clone()]
            saved_shift = {key: buf.clone() for key, buf in st.shift.items()}
            self.token = torch.zeros(st.batch, 1, dtype=torch.long, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(warmup):
                    st.pos.fill_(p)
                    self._body(self.token)
            torch.cuda.current_stream(device).wait_stream(side)
            st.pos.fill_(p)
            self.graph = torch.cuda.CUDAGraph()
            # records, does not run; thread_local: other threads' CUDA calls (a sampler) do not abort it
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.out = self._body(self.token)
            cache.k[:, :, :, p].copy_(saved[0])
            cache.v[:, :, :, p].copy_(saved[1])
            for key, buf in st.shift.items():
                buf.copy_(saved_shift[key])
            st.pos.fill_(cache.length)
        st._synced = cache.length

    def step(self, token: torch.Tensor, *, clone: bool = True):
        """Decode one token per sequence. clone=False returns the graph's output buffers, which the next
        step overwrites."""
        st = self.static
        st.check(token)
        with torch.inference_mode():
            st.sync()
            if self.graph is not None:
                self.token.copy_(token)
                self.graph.replay()
                logits, nxt = self.out
            else:
                logits, nxt = self._body(token)
        st.advance()
        if clone:
            logits, nxt = logits.clone(), (None if nxt is None else nxt.clone())
        return (logits, nxt) if self.greedy else logits
