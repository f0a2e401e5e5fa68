"""QK-norm, per-head gains, partial rotary and xPos scaling of q or k in one Triton kernel forward and one
backward, as PyTorch custom operators (torch.compile traces a call as one node of its graph, no graph break):

    andromeda::qk_rope_fwd(x, gain?, cos?, sin?, scale?, norm, eps, want_norms) -> (out, norms)
    andromeda::qk_rope_bwd(dout, x, gain?, cos?, sin?, scale?, norm, eps) -> (dx, dgain)

x (B, N, H, D): the (B, N, H*D) projection output viewed per head, any strides (read through them, not copied);
D in 16, 32, 64, 128; float32, float16 or bfloat16. gain (H, D) or None (no gain). cos, sin (N, R) or both None
(no rotary, R = 0); scale (N, R) or None (no xPos); R even, 2 <= R <= D; tables in float32, any strides.
norm=False skips the normalization. All arithmetic is float32, rounded once at the store:

    n = max(|x_row|, eps); xhat = x / n (x without norm); y = xhat * gain[h] (y = xhat without gain)
    out_d = (y_d cos_d + sign_d y_p(d) sin_d) scale_d for d < R; out_d = y_d for d >= R

with p(d) = d + R/2, sign -1 for d < R/2, and p(d) = d - R/2, sign +1 for R/2 <= d < R: the model's QKNorm
(norms.py) then positional.apply_rotary, whose intermediate roundings to x's dtype this skips.

Outputs. out (B, H, N, D) contiguous, x's dtype (the flash kernels' layout). norms (B, H, N) float32 = |y| per
row when want_norms, else an EMPTY placeholder of shape (0,) (custom ops cannot return None); the Python entry
`qk_rope` turns the placeholder into None. norms has no gradient (marked non-differentiable). dx: (B, N, H, D)
contiguous (a contiguous (B, N, H*D) tensor), x's dtype. dgain: (H, D) float32, or the (0,) placeholder when gain
is None; summed deterministically (each program writes its partial sum, torch adds them; no atomics). cos, sin
and scale get no gradient (they are buffers). The autograd formula saves x, gain and the tables, not the output.

Kernels for CUDA, and for CPU only under TRITON_INTERPRET=1 (how CI runs them), in qk_rope_kernels.py, imported
on first use (Triton is optional).
"""

import functools
import os

import torch
from torch import Tensor

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Launch settings (not yet tuned on a GPU): a program takes TILE / D rows of one head (64 at D = 128), NUM_WARPS
# warps. The interpreter takes INTERP_ROWS rows a program (N not a multiple of it in the tests: masked tails).
TILE = 8192
NUM_WARPS = 8
INTERP_ROWS = 32


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _kernels():
    """The jitted kernels, imported on first use (Triton is optional)."""
    from andromeda.model.backends import qk_rope_kernels as qk

    return qk.qk_rope_fwd, qk.qk_rope_bwd


def unsupported(x: Tensor) -> str | None:
    """None when the kernels run on x (its device, dtype, head dim), else the reason they do not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _interpreting()):
        return f"the qk_rope kernels run on CUDA GPUs (or on CPU under TRITON_INTERPRET=1), not on {x.device.type}"
    if x.dim() != 4 or x.shape[-1] not in HEAD_DIMS:
        return f"x must be (B, N, H, D) with D in {HEAD_DIMS}, got {tuple(x.shape)}"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not supported (float32, float16, bfloat16)"
    return None


_NO_KERNEL = ("{} has kernels for CUDA, and for CPU under TRITON_INTERPRET=1 (set before the process imports "
              "Triton); not for {}")


@torch.library.custom_op("andromeda::qk_rope_fwd", mutates_args=())
def qk_rope_fwd(x: Tensor, gain: Tensor | None, cos: Tensor | None, sin: Tensor | None, scale: Tensor | None,
                norm: bool, eps: float, want_norms: bool) -> tuple[Tensor, Tensor]:
    """(out, norms): the default for devices without a kernel (CUDA's and CPU's are registered below)."""
    raise NotImplementedError(_NO_KERNEL.format("andromeda::qk_rope_fwd", x.device.type))


@torch.library.custom_op("andromeda::qk_rope_bwd", mutates_args=())
def qk_rope_bwd(dout: Tensor, x: Tensor, gain: Tensor | None, cos: Tensor | None, sin: Tensor | None,
                scale: Tensor | None, norm: bool, eps: float) -> tuple[Tensor, Tensor]:
    """(dx, dgain): the default for devices without a kernel (CUDA's and CPU's are registered below)."""
    raise NotImplementedError(_NO_KERNEL.format("andromeda::qk_rope_bwd", x.device.type))


def _forward(x, gain, cos, sin, scale, norm: bool, eps: float, want_norms: bool) -> tuple[Tensor, Tensor]:
    """The kernel of andromeda::qk_rope_fwd: (out (B, H, N, D), norms (B, H, N) float32 or the (0,) placeholder)."""
    _check_device(x, "andromeda::qk_rope_fwd")
    fwd, _ = _kernels()
    b, n, h, d = x.shape
    rot = 0 if cos is None else cos.shape[1]
    out = torch.empty(b, h, n, d, device=x.device, dtype=x.dtype)
    norms = torch.empty((b, h, n) if want_norms else (0,), device=x.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, norms
    rows = _rows(d)
    g, t = _gain(gain, x), _tables(cos, sin, scale, x)
    fwd[(_cdiv(n, rows), b * h)](
        x, g[0], t[0], t[1], t[2], out, norms, n, h, *x.stride(), *g[1:], *t[3:], eps,
        **_widths(d, rot), BLOCK_N=rows, NORM=norm, HAS_GAIN=gain is not None, HAS_SCALE=scale is not None,
        WANT_NORMS=want_norms, num_warps=NUM_WARPS)
    return out, norms


def _backward_kernel(dout, x, gain, cos, sin, scale, norm: bool, eps: float) -> tuple[Tensor, Tensor]:
    """The kernel of andromeda::qk_rope_bwd: (dx (B, N, H, D) contiguous, dgain (H, D) float32 or the (0,)
    placeholder) from dout (B, H, N, D), any strides."""
    _check_device(x, "andromeda::qk_rope_bwd")
    _, bwd = _kernels()
    b, n, h, d = x.shape
    rot = 0 if cos is None else cos.shape[1]
    dx = torch.empty(b, n, h, d, device=x.device, dtype=x.dtype)
    rows = _rows(d)
    nb = _cdiv(n, rows)
    # per-program partial sums of dgain: (B, programs along N, H, D), added here
    part = torch.zeros((b, nb, h, d) if gain is not None else (1,), device=x.device, dtype=torch.float32)
    if dx.numel() > 0:
        g, t = _gain(gain, x), _tables(cos, sin, scale, x)
        bwd[(nb, b * h)](
            dout, x, g[0], t[0], t[1], t[2], dx, part, n, h, nb, *dout.stride(), *x.stride(), *g[1:], *t[3:], eps,
            **_widths(d, rot), BLOCK_N=rows, NORM=norm, HAS_GAIN=gain is not None, HAS_SCALE=scale is not None,
            num_warps=NUM_WARPS)
    dgain = part.sum((0, 1)) if gain is not None else x.new_empty((0,), dtype=torch.float32)
    return dx, dgain


qk_rope_fwd.register_kernel(("cuda", "cpu"), _forward)
qk_rope_bwd.register_kernel(("cuda", "cpu"), _backward_kernel)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _widths(d: int, rot: int) -> dict:
    """The kernels' piece widths: D, R, and R/2 and D - R rounded up to powers of two (HP, RP)."""
    return dict(D=d, R=rot, HP=1 << max(rot // 2 - 1, 0).bit_length(), RP=1 << max(d - rot - 1, 0).bit_length())


def _check_device(x: Tensor, op: str) -> None:
    if x.device.type == "cpu" and not _interpreting():
        raise NotImplementedError(_NO_KERNEL.format(op, "CPU without TRITON_INTERPRET=1"))


def _rows(d: int) -> int:
    """Rows (positions) a program takes."""
    return INTERP_ROWS if _interpreting() else max(16, min(128, TILE // d))


def _gain(gain: Tensor | None, x: Tensor) -> tuple:
    """(pointer, stride over heads, stride over features); x stands in for a missing gain (never read)."""
    if gain is None:
        return x, 0, 0
    return gain, gain.stride(0), gain.stride(1)


def _tables(cos, sin, scale, x: Tensor) -> tuple:
    """(cos, sin, scale, their (row, column) strides); x stands in for missing tables (never read)."""
    ts = [x if t is None else t for t in (cos, sin, scale)]
    strides = [s for t, real in zip(ts, (cos, sin, scale), strict=True)
               for s in ((0, 0) if real is None else t.stride())]
    return (*ts, *strides)


@qk_rope_fwd.register_fake
def _fwd_shapes(x, gain, cos, sin, scale, norm, eps, want_norms):
    b, n, h, d = x.shape
    norms = x.new_empty((b, h, n) if want_norms else (0,), dtype=torch.float32)
    return x.new_empty((b, h, n, d)), norms


@qk_rope_bwd.register_fake
def _bwd_shapes(dout, x, gain, cos, sin, scale, norm, eps):
    dgain = x.new_empty(tuple(gain.shape) if gain is not None else (0,), dtype=torch.float32)
    return x.new_empty(x.shape), dgain


def _setup_context(ctx, inputs, output) -> None:
    x, gain, cos, sin, scale, norm, eps, _ = inputs
    ctx.save_for_backward(x, gain, cos, sin, scale)
    ctx.norm, ctx.eps = norm, eps
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dnorms):
    x, gain, cos, sin, scale = ctx.saved_tensors
    if dout is None:  # only the norms were used: they carry no gradient
        return (None,) * 8
    dx, dgain = qk_rope_bwd(dout, x, gain, cos, sin, scale, ctx.norm, ctx.eps)
    dgain = dgain.to(gain.dtype) if gain is not None and ctx.needs_input_grad[1] else None
    return dx, dgain, None, None, None, None, None, None


qk_rope_fwd.register_autograd(_backward, setup_context=_setup_context)


def qk_rope(x: Tensor, gain: Tensor | None, cos: Tensor | None, sin: Tensor | None, scale: Tensor | None = None,
            *, norm: bool = True, eps: float = 1e-6, want_norms: bool = False) -> tuple[Tensor, Tensor | None]:
    """(out (B, H, N, D) contiguous, norms (B, H, N) float32 or None): x (B, N, H, D) QK-normed (norm=True),
    times gain (H, D) or (H, 1, D) (QKNorm's parameter), its first R features rotated by cos, sin (N, R) and
    multiplied by scale (N, R) (xPos: XPos.scale for queries, XPos.inv for keys); norms = |x / n * gain| per row
    when want_norms (else None). One call of andromeda::qk_rope_fwd; gradients flow to x and gain."""
    if x.dim() != 4 or x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"qk_rope: x must be (B, N, H, D) with D in {HEAD_DIMS}, got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"qk_rope: dtype {x.dtype} is not one of float32, float16, bfloat16")
    _, n, h, d = x.shape
    if gain is not None:
        if gain.numel() != h * d or gain.shape[0] != h or gain.shape[-1] != d:
            raise ValueError(f"qk_rope: gain must be ({h}, {d}) or ({h}, 1, {d}), got {tuple(gain.shape)}")
        gain = gain.reshape(h, d)
    if (cos is None) != (sin is None) or (scale is not None and cos is None):
        raise ValueError("qk_rope: cos and sin go together, and scale needs them")
    if cos is not None:
        rot = cos.shape[-1]
        if rot % 2 or not 2 <= rot <= d:
            raise ValueError(f"qk_rope: the rotary dim must be even and between 2 and {d}, got {rot}")
        for name, t in (("cos", cos), ("sin", sin), ("scale", scale)):
            if t is not None and tuple(t.shape) != (n, rot):
                raise ValueError(f"qk_rope: {name} must be ({n}, {rot}), got {tuple(t.shape)}")
    out, norms = qk_rope_fwd(x, gain, cos, sin, scale, norm, eps, want_norms)
    return out, norms if want_norms else None


__all__ = ["qk_rope", "qk_rope_fwd", "qk_rope_bwd", "unsupported"]
