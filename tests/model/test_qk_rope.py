"""The fused QK-norm + partial rotary + xPos op andromeda::qk_rope_fwd / _bwd (backends/qk_rope.py).

The kernels run under the Triton interpreter on CPU in a child pytest started with TRITON_INTERPRET=1
(tests/model/interp_qk_rope_cases.py): forward, norms and gradients against float64 written from the formula
(`reference64` here), bfloat16, the model's unfused path, strides, opcheck and torch.compile. Here: schemas,
shapes under fake tensors, argument checks; on CUDA, when present, bfloat16 at the 2.5B model's shape.
"""

import os

import pytest
import torch
from interp_child import run_interpreter_cases

from andromeda.model.backends import qk_rope as qr
from andromeda.model.positional import anchored_xpos, rotary_tables

F64 = torch.float64


def reference64(x, gain, cos, sin, scale, norm=True, eps=1e-6):
    """(out (B, H, N, D), norms (B, H, N)) in float64 from the formula: y = x / max(|x|, eps) * gain[h] per row of
    x (B, N, H, D); out_d = (y_d cos_d + sign_d y_p(d) sin_d) scale_d for d < R (p(d) = d + R/2 with sign -1 in
    the first half, d - R/2 with sign +1 in the second), y_d beyond R; norms = |y|. Differentiable."""
    x = x.to(F64)
    h, d = x.shape[2], x.shape[3]
    y = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps) if norm else x
    if gain is not None:
        y = y * gain.to(F64).reshape(h, d)
    out = y
    if cos is not None:
        r = cos.shape[-1]
        first, second, rest = y[..., : r // 2], y[..., r // 2: r], y[..., r:]
        partner = torch.cat([-second, first], dim=-1)  # sign_d y_p(d)
        c, s = (t.to(F64)[None, :, None, :] for t in (cos, sin))  # (1, N, 1, R)
        rot = y[..., :r] * c + partner * s
        if scale is not None:
            rot = rot * scale.to(F64)[None, :, None, :]
        out = torch.cat([rot, rest], dim=-1)
    return out.transpose(1, 2), torch.linalg.vector_norm(y, dim=-1).transpose(1, 2)


def by_columns(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """t (B, H, N, D) divided by the xPos scale of its columns (1 beyond R): xPos tables span many orders of
    magnitude over a row's features, so outputs compare at the scale of the rotated values."""
    if scale is None:
        return t.to(F64)
    s = torch.ones(t.shape[-2:], dtype=F64, device=t.device)
    s[:, : scale.shape[-1]] = scale.to(F64)
    return t.to(F64) / s


def assert_rows_close(got, want, tol: float, rel: float = 0.0, what: str = "") -> None:
    """|got - want| <= rel |want| + tol (the row's largest |want|) everywhere (rows: the last dim)."""
    got, want = got.to(F64), want.to(F64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    bound = rel * want.abs() + tol * want.abs().amax(-1, keepdim=True)
    err = (got - want).abs() - bound
    assert err.max().item() <= 0, f"{what}: worst excess {err.max().item():.3g} (max |diff| " \
                                   f"{(got - want).abs().max().item():.3g})"


def real_tables(first: int, n: int, rot: int, queries: bool, device=None):
    """The model's rotary and xPos tables of positions first .. first + n - 1 (scale base 512): queries' scale or
    keys' inverse."""
    cos, sin = rotary_tables(torch.arange(first, first + n, device=device), rot)
    xpos = anchored_xpos(first, n, rot, 512, device=device)
    return cos, sin, xpos.scale if queries else xpos.inv


def test_the_op_in_the_interpreter():
    pytest.importorskip("triton")
    run_interpreter_cases("interp_qk_rope_cases.py", 16)


def test_the_model_with_the_fused_op_in_the_interpreter():
    """The model through the op (TritonTuning.fused_qk) against the model through PyTorch ops: logits, every
    gradient, the skipped ALiBi tiles, cached chunks (tests/model/interp_qk_model_cases.py)."""
    run_interpreter_cases("interp_qk_model_cases.py", 3)


def test_schemas_take_flat_arguments_and_optional_tensors():
    assert str(torch.ops.andromeda.qk_rope_fwd.default._schema) == (
        "andromeda::qk_rope_fwd(Tensor x, Tensor? gain, Tensor? cos, Tensor? sin, Tensor? scale, bool norm, "
        "float eps, bool want_norms) -> (Tensor, Tensor)")
    assert str(torch.ops.andromeda.qk_rope_bwd.default._schema) == (
        "andromeda::qk_rope_bwd(Tensor dout, Tensor x, Tensor? gain, Tensor? cos, Tensor? sin, Tensor? scale, "
        "bool norm, float eps) -> (Tensor, Tensor)")


@pytest.mark.parametrize("want_norms", [True, False])
def test_fake_shapes_without_running_a_kernel(want_norms):
    """Under fake tensors (what torch.compile traces with): out (B, H, N, D) contiguous; norms (B, H, N) float32,
    or the (0,) placeholder (the entry gives None); dx (B, N, H, D) contiguous, dgain (H, D) float32."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 5, 3 * 32, dtype=torch.bfloat16).view(2, 5, 3, 32)
        gain, cos = torch.empty(3, 1, 32), torch.empty(5, 16)
        out, norms = qr.qk_rope(x, gain, cos, cos, cos, want_norms=want_norms)
        assert out.shape == (2, 3, 5, 32) and out.is_contiguous() and out.dtype == torch.bfloat16
        assert (norms is None) if not want_norms else (norms.shape == (2, 3, 5) and norms.dtype == torch.float32)
        raw = qr.qk_rope_fwd(x, gain.view(3, 32), cos, cos, None, True, 1e-6, want_norms)[1]
        assert raw.shape == ((2, 3, 5) if want_norms else (0,))
        dx, dgain = qr.qk_rope_bwd(out, x, gain.view(3, 32), cos, cos, None, True, 1e-6)
        assert dx.shape == x.shape and dx.is_contiguous() and dx.dtype == x.dtype
        assert dgain.shape == (3, 32) and dgain.dtype == torch.float32
        assert qr.qk_rope_bwd(out, x, None, None, None, None, False, 1e-6)[1].shape == (0,)


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.zeros(1, 4, 2, 48)), "D in"),
    (dict(x=torch.zeros(1, 4, 2, 16, dtype=torch.float64)), "dtype"),
    (dict(gain=torch.ones(3, 16)), "gain"),
    (dict(sin=None), "go together"),
    (dict(cos=None, sin=None), "go together"),  # scale without rotary
    (dict(cos=torch.ones(4, 3), sin=torch.ones(4, 3), scale=None), "even"),
    (dict(scale=torch.ones(5, 8)), "scale must be"),
])
def test_the_entry_checks_its_arguments(bad, match):
    args = dict(x=torch.zeros(1, 4, 2, 16), gain=torch.ones(2, 16), cos=torch.ones(4, 8), sin=torch.ones(4, 8),
                scale=torch.ones(4, 8))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        qr.qk_rope(args["x"], args["gain"], args["cos"], args["sin"], args["scale"])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs the kernels on CPU")
def test_cpu_without_the_interpreter_says_so():
    assert "CPU under TRITON_INTERPRET=1" in qr.unsupported(torch.zeros(1, 4, 2, 16))
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET=1"):
        qr.qk_rope(torch.zeros(1, 4, 2, 16), None, None, None)


@pytest.mark.cuda
@pytest.mark.parametrize("heads,queries", [(24, True), (1, False)], ids=["queries", "keys"])
def test_bf16_at_the_2_5b_shape_on_cuda(heads, queries):
    """B=2, N=2048, D=128, R=64, gains, xPos (queries: 24 heads and XPos.scale; keys: 1 head and XPos.inv):
    forward, norms, dx and dgain against float64 from the same bfloat16 inputs."""
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    b, n, d, r = 2, 2048, 128, 64
    x = torch.randn(b, n, heads * d, generator=g, device=dev).to(torch.bfloat16).requires_grad_()
    gain = (0.5 + torch.rand(heads, 1, d, generator=g, device=dev)).requires_grad_()
    cos, sin, scale = real_tables(0, n, r, queries, dev)
    out, norms = qr.qk_rope(x.view(b, n, heads, d), gain, cos, sin, scale, want_norms=True)
    x64, g64 = x.detach().to(F64).requires_grad_(), gain.detach().to(F64).requires_grad_()
    want, want_norms = reference64(x64.view(b, n, heads, d), g64, cos, sin, scale)
    assert out.shape == (b, heads, n, d) and out.is_contiguous() and out.dtype == torch.bfloat16
    # one rounding to bfloat16 (2^-9 relative), float32 arithmetic before it
    assert_rows_close(by_columns(out, scale), by_columns(want, scale), 1e-5, rel=2**-8, what="out")
    assert_rows_close(norms, want_norms, 1e-5, what="norms")
    dout = torch.randn(out.shape, generator=g, device=dev).to(torch.bfloat16)
    dx, dgain = torch.autograd.grad(out, (x, gain), dout)
    want_dx, want_dgain = torch.autograd.grad(want, (x64, g64), dout.to(F64))
    assert dx.dtype == torch.bfloat16 and dgain.shape == gain.shape
    assert_rows_close(dx.view(b, n, heads, d), want_dx.view(b, n, heads, d), 1e-4, rel=2**-8, what="dx")
    assert_rows_close(dgain, want_dgain, 1e-4, what="dgain")
