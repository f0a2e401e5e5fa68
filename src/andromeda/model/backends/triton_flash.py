"""Our Triton flash-attention kernel: forward and backward, causal, fused ALiBi, GQA/MQA.

FlashAttention-2 structure. Forward: one program per (batch x head, query block) streams key
blocks with an online softmax in base 2 (scores scaled by scale * log2(e), ALiBi slopes
likewise) and stores the output and the row log-sum-exp. Backward: one program per (batch x head,
query block) computes dQ and the row's rowsum(dO * O); then one program per (batch, key block, up to
group_heads query heads of one KV group) accumulates those heads' share of dK and dV over the query
blocks (the shares of a group's programs are summed afterwards, so K/V are never expanded).
The tuning (TritonTuning in backends/settings.py: head splitting, far-key skipping, heads per dK/dV program, the
Hopper forward, launch overrides) is read from the active settings, backends.tuning(TritonTuning), at each call.

Each loop runs in two spans: the blocks every row of the tile may see in full (no mask, no
bounds checks) and the few that straddle the causal diagonal or the end of the keys (masked).
Under causal masking the forward adds ALiBi as a per-key term, slope * (j - q0) with q0 the
tile's first query position: it differs from -slope * (i - j) by a per-row constant, which the
softmax ignores and the stored log-sum-exp takes back out, so the bias costs one broadcast add.
Where only the first heads have ALiBi (the model's layout), those heads and the others launch
separately, each kernel compiled for its case, so heads without ALiBi do not add zeros.
Under causal ALiBi (keys >= skip_min_keys), forward and backward skip the key blocks too far back to
count: the forward runs a tile's diagonal blocks first and bounds the rest by Cauchy-Schwarz from the
row maxima, the backward from the stored log-sum-exp; what is skipped weighs under 2^-32 of a row's sum.
On sm90 GPUs the forward of causal self-attention over whole 128-row tiles (head dim 128, 16-bit; with
TritonTuning.sm90_offset also queries after whole tiles of earlier keys) is
instead the warp-specialized Gluon kernel of gluon_flash_kernels.py (`_sm90_fits`, `_forward_sm90`); its
ALiBi heads skip far blocks from bounds taken before the loop (alibi_first_block). The backward is the same.
On Hopper (sm90+) tiles arrive through TMA descriptors; other GPUs load through pointers. Launch
settings are tried in order (`_candidates`: H100-tuned first) and a launch that runs out of shared
memory falls back to smaller tiles, so GPUs with less shared memory than Hopper run too.

The forward and backward here are the CUDA and CPU kernels of the custom ops andromeda::flash_attention_fwd and
_bwd (triton_op.py: schemas, fake shapes, autograd), which flash_attention() calls: torch.compile traces a call
as one node of its graph. They read the tuning when they run; the backward works out its launches again from the
forward's inputs and the settings (the ALiBi head prefix is cached per slopes tensor, so without a host read).
Queries are the last Nq of Nk positions (offset Nk - Nq), so cached decoding works too.
ALiBi adds -slope_h * (i - j) (|i - j| when not causal); a zero slope is no bias.
Under TRITON_INTERPRET=1 the same kernels run on the CPU (small fixed blocks, both load paths):
that is how CI exercises this file.
"""

from __future__ import annotations

import functools
import os
import weakref

import torch

from andromeda.model.backends import block_count, triton_op
from andromeda.model.backends.registry import register
from andromeda.model.backends.settings import TritonTuning, tuning

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _kernels():
    """The jitted kernels, imported on first use (Triton is optional)."""
    from andromeda.model.backends import triton_flash_kernels as tk

    return tk.flash_fwd, tk.flash_bwd_dkdv, tk.flash_bwd_dq


# tried after the tuned settings when a launch runs out of shared memory (GPUs with less than Hopper's)
_FALLBACKS = (dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
              dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1))
_CHOSEN: dict[tuple, int] = {}  # (kernel, device, dtype, head dim) -> index of the candidate that launched


def _candidates(device: torch.device, kernel: str, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Launch settings of kernel "fwd", "bwd" or "dq" in the order to try them.

    Interpreter: small blocks. CUDA: the settings tuned on an H100 (docs/performance.md), then smaller
    ones for GPUs with less shared memory (an A100 has 164 KB per block, consumer parts ~100 KB).
    """
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
    override = tuning(TritonTuning).config_override.get(kernel)  # benchmarks' and tests' launch settings
    if override:
        cands = [dict(override)]
    elif kernel == "dq":  # dQ walks keys for a query block: the dK/dV kernel's blocks, transposed
        cands = [{**c, "BLOCK_M": c["BLOCK_N"], "BLOCK_N": c["BLOCK_M"]} for c in _candidates(device, "bwd", dtype)]
    elif device.type != "cuda":
        cands = [dict(BLOCK_M=16, BLOCK_N=16)]
    else:
        tuned = []
        if kernel == "fwd" and hopper and dtype != torch.float32:  # 128x128 tiles need Hopper's 227 KB
            tuned = [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)]
        # backward, and float32 (4-byte tiles) everywhere: 64x64 / 4 warps / 2 stages (H100, head dim 128,
        # 8K: 340 TFLOP/s fwd+bwd; 8 warps gave 171)
        cands = tuned + [dict(c) for c in _FALLBACKS]
    for c in cands:
        c["TMA"] = (device.type != "cuda" or hopper) and c.get("TMA", True)
        if kernel == "fwd":
            c.setdefault("WS", False)
        else:
            c.pop("WS", None)
    return cands


def _launch(kernel: str, device: torch.device, dtype: torch.dtype, d: int, run) -> dict:
    """run(cfg) with the first launch setting that fits the GPU; remembers it for the next call."""
    from triton.runtime.errors import OutOfResources

    cands = _candidates(device, kernel, dtype)
    key = (kernel, device.index, dtype, d)
    override = tuning(TritonTuning).config_override.get(kernel)
    first = 0 if override else min(_CHOSEN.get(key, 0), len(cands) - 1)
    for i in range(first, len(cands)):
        try:
            run(cands[i])
        except OutOfResources:
            if i == len(cands) - 1:
                raise
            continue
        if not override:
            _CHOSEN[key] = i
        return cands[i]
    raise AssertionError("unreachable: the loop returns or raises")


def _use_tma(cfg: dict, q: torch.Tensor, k: torch.Tensor, *more: torch.Tensor) -> bool:
    """TMA wants 16-byte aligned operands at least one block long; otherwise load through pointers."""
    return (cfg["TMA"] and q.shape[2] >= cfg["BLOCK_M"] and k.shape[2] >= cfg["BLOCK_N"]
            and all(t.data_ptr() % 16 == 0 for t in (q, k, *more)))


def _desc(t: torch.Tensor, rows: int, tma: bool):
    """A (B*heads, N, D) TMA descriptor with (1, rows, D) boxes; the tensor itself on the pointer path."""
    if not tma:
        return t
    from triton.tools.tensor_descriptor import TensorDescriptor

    v = t.view(-1, t.shape[2], t.shape[3])
    return TensorDescriptor.from_tensor(v, [1, rows, v.shape[2]])


def _bounds(nq: int, nk: int) -> dict:
    """Compile-time loop bounds for the interpreter only (on a GPU they would recompile per length)."""
    if _interpreting():
        return dict(INTERP=True, NQ_C=nq, NK_C=nk)
    return dict(INTERP=False, NQ_C=0, NK_C=0)


def _slopes(slopes: torch.Tensor | None, h: int, device: torch.device) -> torch.Tensor:
    if slopes is None:
        return torch.zeros(h, device=device, dtype=torch.float32)
    return slopes.to(device=device, dtype=torch.float32).contiguous()


_PREFIX: dict[int, tuple] = {}  # id(slopes) -> (weak reference, version, number of leading ALiBi heads)


def _alibi_prefix(slopes: torch.Tensor) -> int | None:
    """n where heads 0 .. n have nonzero slopes and the rest zero (the model's layout, positional.head_slopes),
    else None. Read from the device once per slopes tensor and in-place version (a host sync, then cached);
    None without reading while a CUDA graph is being captured, where a sync is not allowed."""
    try:
        version = slopes._version
    except RuntimeError:  # an inference-mode tensor keeps no version: taken as never changed in place
        version = None
    hit = _PREFIX.get(id(slopes))
    if hit is not None and hit[0]() is slopes and hit[1] == version:
        return hit[2]
    if slopes.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    nz = (slopes != 0).tolist()
    n = nz.index(False) if False in nz else len(nz)
    n = None if any(nz[n:]) else n
    if len(_PREFIX) > 64:  # tensors come and go (tests, benchmarks): forget the dead ones
        for key in [key for key, v in _PREFIX.items() if v[0]() is None]:
            del _PREFIX[key]
    _PREFIX[id(slopes)] = (weakref.ref(slopes), version, n)
    return n


KNORM_BLOCK = 64  # keys a _key_norm_prefix_max entry steps by (the kernels' KNB)


def _key_norm_prefix_max(k: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(B*H_kv, ceil(Nk / KNORM_BLOCK)) float32: entry [i, c] is the largest norm among keys 0 .. (c + 1) *
    KNORM_BLOCK - 1 of KV head i (of k, or the given (B, H_kv, Nk) norms). A causal query tile reads the entry
    of the last key before its diagonal blocks, a bound on every key it may skip (key norms may grow with
    position, so a prefix bound stays close to the keys near the diagonal); the backward also reads the last
    entry, a bound on all keys."""
    b, hkv, nk, _ = k.shape
    if norms is None:
        norms = torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32)
    norms = norms.float().reshape(b * hkv, nk)
    pad = -nk % KNORM_BLOCK
    if pad:
        norms = torch.nn.functional.pad(norms, (0, pad))
    return norms.view(b * hkv, -1, KNORM_BLOCK).amax(-1).cummax(-1).values.contiguous()


def _skip_threshold(nk: int) -> float:
    """The skipping threshold (base 2): a key block is skipped when its weight is provably below 2^-t of
    every row's largest. With t = 32 + ceil(log2 Nk), all the keys skipped in a row together weigh under
    2^-32 of its softmax sum, 2^8 below float32's unit roundoff (the kernel's _first_needed_key)."""
    return 32.0 + max(nk - 1, 1).bit_length()


def _head_runs(h: int, alibi: bool, prefix: int | None) -> tuple[tuple[int, int, bool], ...]:
    """The launches (first head, heads, ALiBi) that cover h heads. Causal ALiBi costs an add a score, so
    when only the first `prefix` heads have it, those launch with ALiBi and the others without (split_heads)."""
    if alibi and tuning(TritonTuning).split_heads and prefix is not None and prefix < h:
        return ((0, prefix, True), (prefix, h - prefix, False)) if prefix else ((0, h, False),)
    return ((0, h, alibi),)


def _group_heads(g: int, runs: tuple) -> int:
    """Heads a dK/dV program sums: the largest c <= TritonTuning.group_heads dividing the group size and every
    launch's first head and head count, so that a program's heads share one KV head and one launch."""
    c = min(tuning(TritonTuning).group_heads, g)
    while c > 1 and (g % c or any(h0 % c or hr % c for h0, hr, _ in runs)):
        c -= 1
    return c


# The Hopper forward (gluon_flash_kernels) runs on sm90 GPUs, for the shapes it covers (_sm90_fits), unless
# TritonTuning.sm90_forward is False; its launch setting is TritonTuning.sm90.
_GLUON: list = []  # [kernels module or None]: imported once


def _gluon_kernels():
    if not _GLUON:
        try:
            from andromeda.model.backends import gluon_flash_kernels
        except ImportError:  # a Triton without Gluon's Hopper ops: the Triton forward everywhere
            gluon_flash_kernels = None
        _GLUON.append(gluon_flash_kernels)
    return _GLUON[0]


@functools.cache
def _is_sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


def _sm90_offset_fits(nq: int, nk: int, offset: bool, step: int) -> bool:
    """Queries the last nq of nk keys in a way the Hopper forward covers: none before them, or (`offset`:
    TritonTuning.sm90_offset) an offset of whole `step`-row tiles, each tile's last key block its one diagonal
    block."""
    return nq == nk or (offset and nq < nk and (nk - nq) % step == 0)


def _sm90_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> bool:
    """Whether the Hopper forward covers this call: an sm90 GPU (its matmuls are wgmma, which other
    generations lack), causal attention over a whole number of query tiles (self-attention, or with
    sm90_offset queries after whole tiles of earlier keys), head dim 128, 16-bit inputs (contiguous, 16-byte
    aligned: TMA), a positive scale; unless tuned off (sm90_forward)."""
    tune = tuning(TritonTuning)
    step = tune.sm90["BLOCK_N"]  # the kernel masks a tile's last key block only: tiles of 2 BLOCK_M = BLOCK_N
    return (tune.sm90_forward and step == 2 * tune.sm90["BLOCK_M"] and q.is_cuda and not _interpreting()
            and causal and scale > 0
            and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == v.dtype == q.dtype and q.shape[3] == 128
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v))
            and _sm90_offset_fits(q.shape[2], k.shape[2], tune.sm90_offset, step) and q.shape[2] % step == 0
            and _is_sm90(q.device.index if q.device.index is not None else torch.cuda.current_device())
            and _gluon_kernels() is not None)


# Compiled kernels by what Triton specializes on, so that repeated launches skip the JIT's argument binding
# (measured ~0.1 ms of host time a launch with tensor descriptors on the H100 machine).
_COMPILED: dict[tuple, object] = {}


def _spec(a) -> tuple:
    """What Triton's launcher specializes an argument on: integers equal to 1, divisible by 16 or beyond
    32 bits; tensors' dtype and 16-byte alignment; tensor descriptors' block and dtype."""
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a == 1, a % 16 == 0, not -(2**31) <= a < 2**31)
    if isinstance(a, float):
        return ("f",)
    if isinstance(a, torch.Tensor):
        return ("t", a.dtype, a.data_ptr() % 16 == 0)
    return ("d", type(a).__name__, tuple(a.block_shape), a.base.dtype)


def _cached_launch(fn, grid: tuple, args: tuple, consts: dict, num_warps: int) -> None:
    """fn[grid](*args, **consts) through the compiled kernel once there is one for these specializations."""
    key = (fn, torch.cuda.current_device(), num_warps, tuple(consts.items()), tuple(map(_spec, args)))
    kernel = _COMPILED.get(key)
    if kernel is None:
        _COMPILED[key] = fn[grid](*args, **consts, num_warps=num_warps)
    else:
        kernel[(*grid, 1, 1)[:3]](*args, *(consts[name] for name in fn.arg_names[len(args):]))


@functools.cache
def _nvmma_layout(rows: int, d: int, dtype: torch.dtype):
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout.get_default_for([rows, d], gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)


def _forward_sm90(q, k, v, slopes, out, lse, runs, scale: float, skip: bool, qn, kn) -> None:
    """The Hopper forward's launches: heads without ALiBi first (they need no bounds, so the GPU starts while
    the host prepares the rest), then each ALiBi run after its skip bounds. qn, kn: the score norms
    (flash_attention) or None."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from andromeda.model.backends import triton_flash_kernels as tk

    gk = _gluon_kernels()
    b, h, nq, d = q.shape
    nk = k.shape[2]
    off = nk - nq  # the queries' first position (_sm90_fits: a whole number of tiles and key blocks)
    g = h // k.shape[1]
    sm90 = tuning(TritonTuning).sm90
    bm, bn = sm90["BLOCK_M"], sm90["BLOCK_N"]
    tiles = nq // (2 * bm)

    def desc(t, rows):
        return TensorDescriptor.from_tensor(t.view(-1, d), [rows, d], _nvmma_layout(rows, d, t.dtype))

    descs = (desc(q, bm), desc(k, bn), desc(v, bn), desc(out, bm))
    knorm, lo = slopes, lse
    for head0, hr, ab in sorted(runs, key=lambda r: r[2]):
        if skip and ab and lo is lse:
            knorm = _key_norm_prefix_max(k, kn)
            lo = torch.empty(b * h, tiles, device=q.device, dtype=torch.int32)
        if skip and ab:
            _cached_launch(tk.alibi_first_block, (b * hr, tiles), (
                q, k, slopes, knorm, lse if qn is None else qn, lo, q.stride(1), q.stride(2), k.stride(1),
                k.stride(2), h, g, nq, off, scale * LOG2E, head0, hr, knorm.shape[-1], _skip_threshold(nk)),
                dict(KNB=KNORM_BLOCK, TILE=2 * bm, BLOCK_N=bn, D=d, HAS_QN=qn is not None), 8)
        _cached_launch(gk.flash_fwd_sm90, (tiles, b * hr), (*descs, slopes, lo, lse, nq, nk, off, h, g, scale * LOG2E,
                                                            head0, hr),
                       dict(ALIBI=ab, SKIP=skip and ab, STAGES=sm90["STAGES"], BLOCK_M=bm, BLOCK_N=bn, D=d,
                            LOADER_REGS=sm90["LOADER_REGS"], CONSUMER_REGS=sm90["CONSUMER_REGS"]), 4)
        count = block_count.active()
        if count is not None:  # the kernel runs key blocks LO[tile] .. (q0 + TILE) / BLOCK_N of each tile
            ends = (torch.arange(1, tiles + 1, device=q.device) * 2 * bm + off) // bn
            if skip and ab:
                firsts = lo.view(b, h, tiles)[:, head0:head0 + hr].to(torch.int64)
                count.add("forward", (ends - firsts).sum(), 2 * bm, bn, d)
            else:
                count.add("forward", int(ends.sum()) * b * hr, 2 * bm, bn, d)


def _plan(slopes: torch.Tensor | None, h: int, nk: int, causal: bool) -> tuple[tuple, bool]:
    """(head runs, skip far keys) of a call, from the active tuning and the slopes: the forward's and, worked out
    again from the same inputs, its backward's."""
    tune = tuning(TritonTuning)
    alibi = slopes is not None
    runs = _head_runs(h, alibi, _alibi_prefix(slopes) if alibi and tune.split_heads else None)
    skip = causal and tune.skip_far and nk >= tune.skip_min_keys and any(ab for _, _, ab in runs)
    return runs, skip


def _forward(q, k, v, slopes, qn, kn, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel of andromeda::flash_attention_fwd (triton_op.py): (out, base-2 log-sum-exp (B, H, Nq))."""
    fwd, _, _ = _kernels()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    runs, skip = _plan(slopes, h, nk, causal)
    slopes = _slopes(slopes, h, q.device)
    out = torch.empty_like(q)
    lse = torch.empty(b, h, nq, device=q.device, dtype=torch.float32)  # base-2 log-sum-exp
    qn = qn.float().contiguous() if skip and qn is not None else None  # (B, H, Nq): rows of QN
    kn = kn if qn is not None else None
    if _sm90_fits(q, k, v, causal, scale):
        _forward_sm90(q, k, v, slopes, out, lse, runs, scale, skip, qn, kn)
        return out, lse
    knorm = _key_norm_prefix_max(k, kn) if skip else slopes
    nkn = knorm.shape[-1] if skip else 0

    def run(cfg):
        tma = _use_tma(cfg, q, k, v)
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        descs = (_desc(q, bm, tma), _desc(k, bn, tma), _desc(v, bn, tma))
        cnt = _counter("forward", q, bm, bn)
        for head0, hr, ab in runs:
            fwd[(b * hr, triton_cdiv(nq, bm))](
                *descs, q, k, v, slopes, knorm, lse if qn is None else qn, out, lse,
                lse if cnt is None else cnt,
                q.stride(1), q.stride(2), k.stride(1), k.stride(2), out.stride(1), out.stride(2),
                h, h // hkv, nq, nk, nk - nq, scale * LOG2E, head0, hr, nkn,
                _skip_threshold(nk),
                ALIBI=ab, CAUSAL=causal, SKIP=skip and ab, KNB=KNORM_BLOCK, IEEE=q.dtype == torch.float32,
                COUNT=cnt is not None, HAS_QN=qn is not None, **_bounds(nq, nk), D=d, **{**cfg, "TMA": tma})

    _launch("fwd", q.device, q.dtype, d, run)
    return out, lse


def _backward(dout, q, k, v, out, lse, slopes, qn, kn, causal: bool,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel of andromeda::flash_attention_bwd (triton_op.py): (dq, dk, dv). The head runs and the skipping
    are the forward's (_plan of the same inputs and settings); so are the key-norm bounds, computed again."""
    _, dkdv, dqk = _kernels()
    q, k, v, out, dout = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), dout.contiguous()
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    runs, skip = _plan(slopes, h, nk, causal)
    slopes = _slopes(slopes, h, q.device)
    qn = qn.float().contiguous() if skip and qn is not None else None
    kn = kn if qn is not None else None
    knorm = _key_norm_prefix_max(k, kn) if skip else slopes
    nkn = knorm.shape[-1] if skip else 0
    count = triton_op.backward_count()  # the forward's BlockCount, or None: the active one
    delta = torch.empty(b, h, nq, device=q.device, dtype=torch.float32)  # rowsum(dO * O), from the dQ kernel
    g = h // hkv
    dq = torch.empty_like(q)
    # a dK/dV program sums hc heads of a KV group; the slices (float32 when a group has more) are summed here
    hc = _group_heads(g, runs)
    part = k.dtype if g == 1 else torch.float32
    dk = torch.empty(b, h // hc, nk, d, device=k.device, dtype=part)
    dv = torch.empty(b, h // hc, nk, d, device=v.device, dtype=part)
    # skipping (as in the forward): the dQ kernel writes each head's max of |q_i| |k|max c - lse_i into u
    u = torch.full((b * h,), float("-inf"), device=q.device, dtype=torch.float32) if skip else lse
    skip_t = _skip_threshold(nk)
    flags = dict(CAUSAL=causal, IEEE=q.dtype == torch.float32, **_bounds(nq, nk), D=d)
    common = (q.stride(1), q.stride(2), k.stride(1), k.stride(2))

    def operands(cfg):
        tma = _use_tma(cfg, q, k, v, dout)
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        descs = (_desc(q, bm, tma), _desc(k, bn, tma), _desc(v, bn, tma), _desc(dout, bm, tma))
        return descs, {**flags, **cfg, "TMA": tma}

    def run_dkdv(cfg):
        descs, kw = operands(cfg)
        cnt = _counter("dkdv", q, cfg["BLOCK_M"], cfg["BLOCK_N"], count)
        for head0, hr, ab in runs:
            dkdv[(b * hr // hc, triton_cdiv(nk, cfg["BLOCK_N"]))](
                *descs, q, k, v, slopes, dout, lse, delta, dk, dv, u, lse if cnt is None else cnt, *common,
                dk.stride(1), dk.stride(2), h, g, nq, nk, nk - nq, scale * LOG2E, scale, head0, hr,
                skip_t, ALIBI=ab, SKIP=skip and ab, HC=hc, COUNT=cnt is not None, **kw)

    def run_dq(cfg):
        descs, kw = operands(cfg)
        cnt = _counter("dq", q, cfg["BLOCK_M"], cfg["BLOCK_N"], count)
        for head0, hr, ab in runs:
            dqk[(b * hr, triton_cdiv(nq, cfg["BLOCK_M"]))](
                *descs, q, k, v, slopes, dout, out, lse, delta, dq, knorm, lse if qn is None else qn, u,
                lse if cnt is None else cnt, *common, h, g, nq, nk, nk - nq, scale * LOG2E, scale,
                head0, hr, nkn, skip_t, ALIBI=ab, SKIP=skip and ab, KNB=KNORM_BLOCK,
                COUNT=cnt is not None, HAS_QN=qn is not None, **kw)

    _launch("dq", q.device, q.dtype, d, run_dq)  # first: it writes delta (and u)
    _launch("bwd", q.device, q.dtype, d, run_dkdv)
    if g > 1:  # (B, H / hc, Nk, D) -> (B, H_kv, Nk, D): sum each KV head's slices
        dk = dk.view(b, hkv, g // hc, nk, d).sum(2).to(k.dtype)
        dv = dv.view(b, hkv, g // hc, nk, d).sum(2).to(v.dtype)
    return dq, dk, dv


triton_op.flash_attention_fwd.register_kernel(("cuda", "cpu"), _forward)
triton_op.flash_attention_bwd.register_kernel(("cuda", "cpu"), _backward)


def _counter(kernel: str, q: torch.Tensor, rows: int, keys: int,
             count: block_count.BlockCount | None = None) -> torch.Tensor | None:
    """The tile counter of one launch into `count` (default: the active block_count.count_blocks()), or None
    when not counting."""
    count = count if count is not None else block_count.active()
    return None if count is None else count.counter(kernel, q.device, rows, keys, q.shape[-1])


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flash_attention(q, k, v, *, causal: bool, scale: float, alibi_slopes: torch.Tensor | None = None,
                    norms: tuple[torch.Tensor, torch.Tensor] | None = None):
    """q (B, H, Nq, D), k/v (B, H_kv, Nk, D) -> (B, H, Nq, D). `norms`: (B, H, Nq) and (B, H_kv, Nk) float32
    with |q_i . k_j| <= qn_i kn_j for every causal pair, tighter than |q_i| |k_j| (the kernels' `_reach`:
    the model's norms before xPos), for the ALiBi heads' skipping bound; detached. One call of the custom op
    andromeda::flash_attention_fwd (triton_op.py): torch.compile traces it without a graph break. q, k, v are
    made contiguous here, where a compiled graph can fuse the copy with what produced them, and the backward
    gets the copies the forward used."""
    qn, kn = (None, None) if norms is None else (norms[0].detach(), norms[1].detach())
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return triton_op.flash_attention_fwd(q, k, v, alibi_slopes, qn, kn, causal, scale)[0]


@register("triton")
class TritonFlashAttention:
    score_norms = True  # takes norms= (flash_attention): a bound on the scores for the skipping of far keys

    @property
    def fused_qk(self) -> bool:
        """Whether the model runs QK-norm, rotary and xPos in our fused kernel before this one (backends/qk_rope.py,
        model.attention.Attention._fuses): TritonTuning.fused_qk."""
        return tuning(TritonTuning).fused_qk

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

    def __call__(self, q, k, v, *, causal, scale, alibi_slopes, norms=None):
        return flash_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes, norms=norms)


__all__ = ["flash_attention", "TritonFlashAttention"]
