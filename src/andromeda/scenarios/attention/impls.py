"""Attention implementations the `attention` scenario compares, one calling convention for all.

    call = prepare(impl, problem, pattern, device)    # masks, biases, compiled kernels: outside timing
    out = call(q, k, v)                               # q (B, H, N, D), k/v (B, H_kv, N, D) -> (B, H, N, D)

`unsupported(impl, problem, device)` says up front why a combination cannot run (no such kernel on
this device, a bias the kernel takes no bias for, a pattern it cannot express, a package not
installed); `call.probe(q, k, v)` is the first call, and turns a kernel that torch refuses at run
time into UnsupportedError with torch's own reasons. Kernel names actually launched on CUDA come
from torch.profiler (`cuda_kernels`), checked against what each implementation should launch.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from andromeda.errors import UnsupportedError
from andromeda.model import backends
from andromeda.model.positional import head_slopes
from andromeda.scenarios.attention.sparsity import Pattern, PatternSpec

SDPA = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
        "sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_math": "MATH"}
IMPLS = ("eager", *SDPA, "flex", "triton", "flash_attn", "xformers")
DENSE_MASK_IMPLS = ("eager", "sdpa_math")  # take a sparse pattern as the equivalent dense boolean mask
NATIVE_WINDOW_IMPLS = ("flash_attn", "xformers")  # take a sliding window natively
# Kernel names (substrings, lower case) an implementation should / should not launch on CUDA.
EXPECTED_KERNELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eager": ((), ("flash", "fmha", "cudnn")),
    "sdpa_math": ((), ("flash", "fmha", "cudnn")),
    "sdpa_flash": (("flash",), ()),
    "sdpa_efficient": (("fmha", "efficient", "mem_eff", "cutlass"), ()),
    "sdpa_cudnn": (("cudnn", "fort_native", "fprop", "sdpa"), ()),
    "flex": (("triton_tem", "flex"), ()),
    "flash_attn": (("flash",), ()),
    "xformers": (("fmha", "flash", "cutlass", "attention"), ()),
    "triton": (("flash_fwd",), ("pytorch_flash", "fmha", "cudnn")),  # ours: flash_fwd, flash_bwd_dkdv, flash_bwd_dq
}


@dataclass(frozen=True)
class Problem:
    """One attention call: shapes, dtype, pattern, ALiBi, and whether the backward runs too."""

    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    n: int
    dtype: torch.dtype
    pattern: PatternSpec
    alibi: bool = False
    backward: bool = False
    dense_mask_max_len: int = 4096

    @property
    def causal(self) -> bool:
        return self.pattern.causal

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def unsupported(impl: str, prob: Problem, device: torch.device) -> str | None:
    """Why `impl` cannot run `prob` on `device` (known before any call), or None."""
    pat, cuda = prob.pattern, device.type == "cuda"
    if impl not in IMPLS:
        return f"implementation '{impl}' is unknown; available: {', '.join(IMPLS)}"
    if impl == "triton":
        if "triton" not in backends.names():
            return "no 'triton' backend is registered in andromeda.model.backends"
        if pat.sparse:
            return f"the triton backend takes no mask, so it cannot run the {pat.name} pattern"
        spec = backends.AttentionSpec(prob.heads, prob.kv_heads, prob.head_dim, causal=prob.causal,
                                      alibi=prob.alibi, dtype=prob.dtype)
        return backends.get("triton").supports(spec, device)
    if impl in ("flash_attn", "xformers"):
        if not _installed(impl):
            return f"the {impl} package is not installed (pip install {impl.replace('_', '-')})"
        if not cuda:
            return f"{impl} runs on CUDA only"
        if pat.name not in ("dense", "sliding_window"):
            return f"{impl} cannot express the {pat.name} pattern (it takes dense, causal and sliding-window masks)"
        if impl == "flash_attn" and prob.dtype not in (torch.float16, torch.bfloat16):
            return f"flash_attn takes float16/bfloat16 only, not {str(prob.dtype).removeprefix('torch.')}"
        if impl == "xformers" and prob.alibi:
            return "xformers takes ALiBi only as a dense N x N bias tensor; not measured"
        return None
    if impl == "flex":
        if not _installed("torch.nn.attention.flex_attention"):
            return "torch.nn.attention.flex_attention is not available in this torch build"
        if not cuda and prob.backward:
            return "FlexAttention has no CPU backward in torch (it raises NotImplementedError)"
        if cuda and prob.head_dim < 16:
            return f"FlexAttention's CUDA kernel needs head_dim >= 16, got {prob.head_dim}"
        return None
    # eager and SDPA: a sparse pattern or ALiBi becomes a dense N x N mask/bias
    if pat.sparse and impl not in DENSE_MASK_IMPLS:
        return (f"{impl} cannot express the {pat.name} pattern: its kernel has no block sparsity "
                f"(a sparse pattern runs on flex, or as a dense mask on {' and '.join(DENSE_MASK_IMPLS)})")
    dense_mask = pat.sparse or (prob.alibi and impl != "eager")
    if dense_mask and prob.n > prob.dense_mask_max_len:
        what = f"the {pat.name} pattern" if pat.sparse else "ALiBi"
        return (f"{impl} would take {what} as a dense {prob.n} x {prob.n} mask; measured only for "
                f"seq_len <= dense_mask_max_len ({prob.dense_mask_max_len})")
    return None


# ---- the implementations ------------------------------------------------------------------------
class Call:
    """A prepared implementation: `call(q, k, v) -> out`; `probe` is the first call; `info` says how."""

    def __init__(self, fn: Callable, info: dict):
        self.fn, self.info = fn, info

    def __call__(self, q, k, v):
        return self.fn(q, k, v)

    def probe(self, q, k, v):
        return self.fn(q, k, v)


def expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)  # (B, H, N, D)


@functools.lru_cache(maxsize=8)
def alibi_slopes(heads: int, device: str) -> torch.Tensor:
    """(H,) float32 ALiBi slopes on every head; one tensor per (heads, device), so kernels compile once."""
    return head_slopes(heads, heads).to(device)


def alibi_bias(slopes: torch.Tensor, n: int) -> torch.Tensor:
    """(H, N, N) float32: -slope_h * |i - j|, materialized (eager and SDPA only, short sequences)."""
    pos = torch.arange(n, device=slopes.device)
    return -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs().float()[None]


@functools.lru_cache(maxsize=8)
def _alibi_score_mod(heads: int, device: str):
    slopes = alibi_slopes(heads, device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx).abs()

    return score_mod


def _eager(prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    slopes = alibi_slopes(prob.heads, str(device)) if prob.alibi else None
    if not pattern.spec.sparse:  # our reference backend, as the model uses it
        backend = backends.get("eager")
        return Call(lambda q, k, v: backend(q, k, v, causal=prob.causal, scale=prob.scale, alibi_slopes=slopes),
                    {"how": "andromeda eager backend: float32 scores materialized, softmax, @ V"})
    keep = pattern.dense_mask()  # (N, N)
    bias = alibi_bias(slopes, prob.n) if slopes is not None else None  # (H, N, N)

    def fn(q, k, v):
        kf, vf = expand_kv(k.float(), prob.groups), expand_kv(v.float(), prob.groups)  # (B, H, N, D)
        s = (q.float() @ kf.transpose(-1, -2)) * prob.scale  # (B, H, N, N)
        if bias is not None:
            s = s + bias
        return (s.masked_fill(~keep, float("-inf")).softmax(-1) @ vf).to(q.dtype)

    return Call(fn, {"how": "eager, float32 scores materialized with the pattern as a dense boolean mask"})


_REFUSED = ("no available kernel", "no viable backend")


class _SdpaCall(Call):
    def __init__(self, name: str, prob: Problem, pattern: Pattern, device: torch.device):
        from torch.nn.attention import SDPBackend

        self.backend = getattr(SDPBackend, SDPA[name])
        self.name, self.prob, self.expand = name, prob, False
        self.mask, self.is_causal = None, False
        how = "is_causal" if prob.causal else "no mask"
        if prob.alibi:
            slopes = alibi_slopes(prob.heads, str(device))
            bias = alibi_bias(slopes, prob.n)  # (H, N, N)
            keep = pattern.dense_mask() if pattern.spec.sparse or prob.causal else None
            if keep is not None:
                bias = bias.masked_fill(~keep, float("-inf"))
            self.mask = bias.to(prob.dtype)[None]  # (1, H, N, N)
            how = "ALiBi (and the pattern) as a dense float bias"
        elif pattern.spec.sparse:
            self.mask = pattern.dense_mask()  # (N, N)
            how = "the pattern as a dense boolean mask"
        else:
            self.is_causal = prob.causal
        super().__init__(self._run, {"how": f"F.scaled_dot_product_attention under sdpa_kernel({SDPA[name]}), {how}"})

    def _run(self, q, k, v):
        from torch.nn.attention import sdpa_kernel

        gqa = self.prob.groups > 1
        if self.expand:
            k, v = expand_kv(k, self.prob.groups), expand_kv(v, self.prob.groups)
        with sdpa_kernel(self.backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.is_causal,
                                                  scale=self.prob.scale, enable_gqa=gqa and not self.expand)

    def probe(self, q, k, v):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return self._run(q, k, v)
            except RuntimeError as e:
                if not any(s in str(e).lower() for s in _REFUSED):
                    raise
                first = e
            if self.prob.groups > 1:  # the kernel may take no grouped K/V: expand them inside the call
                self.expand = True
                try:
                    out = self._run(q, k, v)
                    self.info["gqa"] = "K/V expanded to H heads inside the call: the kernel takes no grouped K/V"
                    return out
                except RuntimeError as e:
                    if not any(s in str(e).lower() for s in _REFUSED):
                        raise
        why = sorted({str(w.message).strip().splitlines()[0] for w in caught if "kernel" in str(w.message).lower()
                      or "attention" in str(w.message).lower()})
        reason = "; ".join(why)[:400] or str(first).splitlines()[0]
        raise UnsupportedError(f"torch SDPA has no {SDPA[self.name]} kernel for these inputs on "
                               f"{q.device.type}: {reason}")


def _flex(prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = pattern.block_mask() if (pattern.spec.sparse or prob.causal) else None
    score_mod = _alibi_score_mod(prob.heads, str(device)) if prob.alibi else None
    gqa = prob.groups > 1
    if device.type == "cuda":
        from andromeda.model.backends.flex import _compiled_flex

        kernel, how = _compiled_flex(), "torch.compile(flex_attention), compiled once per process"
    else:
        kernel, how = flex_attention, "flex_attention unfused (CPU): scores materialized, mask_mod on every pair"

    def fn(q, k, v):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=prob.scale, enable_gqa=gqa)

    mask = "no mask" if block_mask is None else f"BlockMask from block indices ({pattern.spec.block_size}-blocks)"
    return Call(fn, {"how": f"{how}; {mask}" + ("; ALiBi as score_mod" if prob.alibi else "")})


def _flash_attn(prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    from flash_attn import flash_attn_func

    w = pattern.spec.window
    window = (w - 1, 0 if prob.causal else w - 1) if pattern.spec.name == "sliding_window" else (-1, -1)
    slopes = alibi_slopes(prob.heads, str(device)) if prob.alibi else None

    def fn(q, k, v):  # flash_attn takes (B, N, H, D); the transposes are views
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0,
                              softmax_scale=prob.scale, causal=prob.causal, window_size=window, alibi_slopes=slopes)
        return out.transpose(1, 2)

    return Call(fn, {"how": f"flash_attn.flash_attn_func, window_size={window}"})


def _xformers(prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    import xformers.ops as xops
    from xformers.ops.fmha import attn_bias as xbias

    w = pattern.spec.window
    if pattern.spec.name == "sliding_window":
        bias = xbias.LocalAttentionFromBottomRightMask(window_left=w - 1, window_right=0 if prob.causal else w - 1)
    else:
        bias = xbias.LowerTriangularMask() if prob.causal else None
    g = prob.groups

    def fn(q, k, v):  # xformers takes (B, N, H, D); GQA as (B, N, H_kv, G, D) with K/V broadcast, no copy
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        b, n, h, d = q.shape
        if g > 1:
            q = q.reshape(b, n, h // g, g, d)
            k = k[:, :, :, None].expand(b, n, h // g, g, d)
            v = v[:, :, :, None].expand(b, n, h // g, g, d)
        out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=prob.scale)
        return out.reshape(b, n, h, d).transpose(1, 2)

    return Call(fn, {"how": f"xformers.ops.memory_efficient_attention, attn_bias={type(bias).__name__}"})


def _triton(prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    backend = backends.get("triton")
    slopes = alibi_slopes(prob.heads, str(device)) if prob.alibi else None
    return Call(lambda q, k, v: backend(q, k, v, causal=prob.causal, scale=prob.scale, alibi_slopes=slopes),
                {"how": "andromeda triton backend (model backend registry)"})


def prepare(impl: str, prob: Problem, pattern: Pattern, device: torch.device) -> Call:
    """Build what the call needs (masks, biases, compiled kernels) outside the timed region."""
    reason = unsupported(impl, prob, device)
    if reason is not None:
        raise UnsupportedError(reason)
    if impl in SDPA:
        return _SdpaCall(impl, prob, pattern, device)
    build = {"eager": _eager, "flex": _flex, "flash_attn": _flash_attn, "xformers": _xformers, "triton": _triton}
    return build[impl](prob, pattern, device)


# ---- which kernels ran --------------------------------------------------------------------------
def cuda_kernels(fn: Callable[[], object], device: torch.device, top: int = 8) -> list[str]:
    """Names of the CUDA kernels one call of fn launches, the `top` longest first (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    totals: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            totals[e.name] = totals.get(e.name, 0.0) + float(e.time_range.elapsed_us())
    return [name[:160] for name, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]


def check_kernels(impl: str, kernels: list[str]) -> str | None:
    """None when the kernel names look like `impl`'s kernel, else what is wrong."""
    want, never = EXPECTED_KERNELS.get(impl, ((), ()))
    low = [k.lower() for k in kernels]
    if not low:
        return "the profiler saw no CUDA kernel"
    if want and not any(w in k for k in low for w in want):
        return f"no kernel named like {' / '.join(want)} ran; saw {', '.join(kernels[:3])}"
    bad = [k for k, lk in zip(kernels, low, strict=True) if any(x in lk for x in never)]
    if bad:
        return f"a fused attention kernel ran where none was expected: {bad[0]}"
    return None


__all__ = [
    "IMPLS", "SDPA", "DENSE_MASK_IMPLS", "Problem", "Call", "unsupported", "prepare", "alibi_slopes", "alibi_bias",
    "expand_kv", "cuda_kernels", "check_kernels",
]
