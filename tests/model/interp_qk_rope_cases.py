"""Run by tests/model/test_qk_rope.py in a child pytest with TRITON_INTERPRET=1 (not collected directly).

The fused QK-norm + rotary + xPos op (backends/qk_rope.py) on its Triton kernels: forward, norms and gradients
(dx, dgain) against float64 from the formula (test_qk_rope.reference64) with and without gains, rotary, xPos and
the normalization, a zero row and a row under eps, N not a multiple of the rows a program takes; bfloat16; the
model's unfused QKNorm + apply_rotary; strided inputs; torch.library.opcheck; torch.compile without a graph break.
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from interp_child import KeepGraphs  # noqa: E402
from test_qk_rope import assert_rows_close, by_columns, real_tables, reference64  # noqa: E402

from andromeda.model.backends import qk_rope as qr  # noqa: E402
from andromeda.model.norms import QKNorm  # noqa: E402
from andromeda.model.positional import apply_rotary  # noqa: E402

F64 = torch.float64
B = 2


def _inputs(n, h, d, rot, *, gain=True, scale=True, real=None, special=True, dtype=torch.float32, seed=0):
    """x (B, N, H*D) (a leaf; the op takes its (B, N, H, D) view), gain (H, 1, D) or None, tables (N, rot) or
    None. Tables: random angles and xPos-like factors in [0.5, 2] that differ between the halves (so a wrong
    partner column shows), or with real= "queries" / "keys" the model's at positions from 199,980. special: one
    row of zeros and one with norm 1e-8 * sqrt(D) < eps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, h, d, generator=g) * 2
    if special:
        x[0, 5, 0] = 0.0
        x[1, n - 1, h - 1] *= 1e-8
    x = x.reshape(B, n, h * d).to(dtype).requires_grad_()
    gains = (0.5 + torch.rand(h, 1, d, generator=g)).requires_grad_() if gain else None
    if not rot:
        return x, gains, None, None, None
    if real:
        return (x, gains, *real_tables(199_980, n, rot, real == "queries"))
    angles = torch.rand(n, rot, generator=g) * 7
    factors = 0.5 + 1.5 * torch.rand(n, rot, generator=g) if scale else None
    return x, gains, angles.cos(), angles.sin(), factors


CASES = [  # heads, head dim, rotary dim (0: none), N, gain, xPos scale, norm, real tables
    (1, 32, 16, 70, True, True, True, None),  # keys of one KV head, R = D/2
    (3, 32, 32, 70, True, True, True, None),  # R = D
    (3, 16, 8, 70, False, True, True, None),  # no gain
    (2, 32, 12, 45, True, False, True, None),  # rotary without xPos; R/2 = 6 and D - R = 20 padded
    (2, 16, 0, 33, True, False, True, None),  # QK-norm only
    (2, 32, 16, 70, True, True, False, None),  # rotary and xPos only (norm=False)
    (3, 64, 2, 21, False, False, False, None),  # the smallest rotary, nothing else
    (1, 32, 16, 70, True, True, True, "keys"),  # the model's tables near position 200,000
    (2, 128, 64, 40, True, True, True, "queries"),  # the 2.5B head layout
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}-d{}-r{}-n{}-gain{:d}-scale{:d}-norm{:d}-{}".format(*c))
def test_forward_norms_and_gradients_equal_float64(case):
    h, d, rot, n, gain, scale, norm, real = case
    x, gains, cos, sin, sc = _inputs(n, h, d, rot, gain=gain, scale=scale, real=real, special=norm, seed=n + h)
    xv = x.view(B, n, h, d)
    out, norms = qr.qk_rope(xv, gains, cos, sin, sc, norm=norm, want_norms=True)
    x64 = x.detach().to(F64).requires_grad_()
    g64 = None if gains is None else gains.detach().to(F64).requires_grad_()
    want, want_norms = reference64(x64.view(B, n, h, d), g64, cos, sin, sc, norm=norm)
    assert out.shape == (B, h, n, d) and out.is_contiguous() and out.dtype == torch.float32
    assert norms.shape == (B, h, n) and norms.dtype == torch.float32 and not norms.requires_grad
    assert_rows_close(by_columns(out, sc), by_columns(want, sc), 1e-5, what="out")
    assert_rows_close(norms, want_norms, 1e-6, what="norms")
    if norm:  # the zero row stays zero
        assert out[0, 0, 5].abs().max() == 0
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = (x,) if gains is None else (x, gains)
    got = torch.autograd.grad(out, params, dout)
    ref = torch.autograd.grad(want, (x64,) if g64 is None else (x64, g64), dout.to(F64))
    assert_rows_close(got[0].view(B, n, h, d), ref[0].view(B, n, h, d), 1e-5, what="dx")
    if gains is not None:
        assert got[1].shape == gains.shape
        assert_rows_close(got[1], ref[1], 1e-5, what="dgain")


def test_bfloat16_forward_and_gradients_round_once():
    """bfloat16 in and out, float32 inside: the output within one bfloat16 ulp (2^-7 relative) of float64 from
    the same bfloat16 inputs; gradients likewise, float32 for the gains. (One ulp, not half: the interpreter's
    float32 -> bfloat16 conversion truncates, even with fp_downcast_rounding="rtne"; the CUDA test checks half.)"""
    n, h, d, rot = 70, 3, 32, 16
    x, gains, cos, sin, sc = _inputs(n, h, d, rot, real="queries", dtype=torch.bfloat16, seed=3)
    out, norms = qr.qk_rope(x.view(B, n, h, d), gains, cos, sin, sc, want_norms=True)
    x64, g64 = x.detach().to(F64).requires_grad_(), gains.detach().to(F64).requires_grad_()
    want, want_norms = reference64(x64.view(B, n, h, d), g64, cos, sin, sc)
    assert out.dtype == torch.bfloat16
    assert_rows_close(by_columns(out, sc), by_columns(want, sc), 1e-6, rel=2**-7, what="out")
    assert_rows_close(norms, want_norms, 1e-6, what="norms")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    dx, dgain = torch.autograd.grad(out, (x, gains), dout)
    want_dx, want_dgain = torch.autograd.grad(want, (x64, g64), dout.to(F64))
    assert dx.dtype == torch.bfloat16 and dgain.dtype == torch.float32
    assert_rows_close(dx.view(B, n, h, d), want_dx.view(B, n, h, d), 1e-5, rel=2**-7, what="dx")
    assert_rows_close(dgain, want_dgain, 1e-5, what="dgain")


def test_equals_the_models_unfused_path_in_bfloat16():
    """QKNorm (gains away from 1) then apply_rotary with the model's xPos tables, as Attention._project and
    _rotate run them in bfloat16: the same values up to their extra roundings."""
    n, h, d, rot = 70, 3, 32, 16
    x, _, cos, sin, sc = _inputs(n, h, d, rot, real="queries", dtype=torch.bfloat16, special=False, seed=4)
    qk = QKNorm(h, d, dim_scale=True)
    with torch.no_grad():
        qk.gain.uniform_(0.5, 1.5)
    q = x.detach().view(B, n, h, d)
    want = apply_rotary(qk(q.transpose(1, 2)), cos, sin, sc)
    got, _ = qr.qk_rope(q, qk.gain, cos, sin, sc)
    assert_rows_close(by_columns(got, sc), by_columns(want, sc), 2**-6, what="unfused")


def test_strided_inputs_give_the_contiguous_result():
    """x a slice of a wider projection output (row stride beyond H*D), tables with a row stride beyond R, the
    gradient arriving transposed: the same bits as contiguous operands."""
    n, h, d, rot = 37, 2, 16, 8
    x, gains, cos, sin, sc = _inputs(n, h, d, rot, seed=5)
    wide = torch.cat([x.detach(), torch.randn(B, n, 16)], dim=-1).requires_grad_()
    xs = wide[..., : h * d].view(B, n, h, d)
    tabs = [torch.cat([t, torch.randn(n, 3)], dim=-1)[:, :rot] for t in (cos, sin, sc)]
    assert not xs.is_contiguous() and not tabs[0].is_contiguous()
    out, _ = qr.qk_rope(xs, gains, *tabs)
    want, _ = qr.qk_rope(x.view(B, n, h, d), gains, cos, sin, sc)
    assert torch.equal(out, want)
    dout = torch.randn(B, n, h, d).transpose(1, 2)  # (B, H, N, D), not contiguous
    got = torch.autograd.grad(out, (wide, gains), dout)
    ref = torch.autograd.grad(want, (x, gains), dout.contiguous())
    assert torch.equal(got[0][..., : h * d], ref[0]) and torch.equal(got[1], ref[1])
    assert got[0][..., h * d:].abs().max() == 0


@pytest.mark.parametrize("full", [True, False], ids=["all-arguments", "nones"])
def test_opcheck(full):
    """Schema, fake-tensor shapes, the autograd registration and AOT dispatch (torch.library.opcheck)."""
    n, h, d = 19, 2, 16
    x, gains, cos, sin, sc = _inputs(n, h, d, 8 if full else 0, gain=full, seed=6)
    g = None if gains is None else gains.detach().view(h, d).requires_grad_()
    xv = x.detach().view(B, n, h, d).requires_grad_()
    torch.library.opcheck(qr.qk_rope_fwd, (xv, g, cos, sin, sc, full, 1e-6, full))
    dout = torch.randn(B, h, n, d)
    torch.library.opcheck(qr.qk_rope_bwd, (dout, xv.detach(), None if g is None else g.detach(), cos, sin, sc,
                                           full, 1e-6))


def test_compiled_call_is_one_graph_and_gives_the_eager_result():
    """fullgraph=True raises on a graph break; the graph holds the op as one node, and the output, the norms and
    the gradients equal the eager call's."""
    n, h, d, rot = 33, 2, 16, 8
    x, gains, cos, sin, sc = _inputs(n, h, d, rot, seed=7)

    def f(x, gains, cos, sin, sc):  # work around the call for the graph to hold
        out, norms = qr.qk_rope((x * 1.5).view(B, n, h, d), gains, cos, sin, sc, want_norms=True)
        return out.sin(), norms

    torch._dynamo.reset()
    backend = KeepGraphs()
    got, got_norms = torch.compile(f, backend=backend, fullgraph=True)(x, gains, cos, sin, sc)
    want, want_norms = f(x, gains, cos, sin, sc)
    assert len(backend.graphs) == 1
    targets = [node.target for node in backend.graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.andromeda.qk_rope_fwd.default) == 1, targets
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_norms, want_norms, rtol=0, atol=0)
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, gains), grad), torch.autograd.grad(want, (x, gains), grad),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_norms_left_out_and_norms_alone():
    """want_norms=False: None from the entry, the (0,) placeholder from the op; an output without gradient
    (no_grad) runs the same kernel."""
    n, h, d, rot = 20, 2, 16, 8
    x, gains, cos, sin, sc = _inputs(n, h, d, rot, seed=8)
    xv = x.view(B, n, h, d)
    out, norms = qr.qk_rope(xv, gains, cos, sin, sc)
    assert norms is None
    raw = qr.qk_rope_fwd(xv.detach(), gains.detach().view(h, d), cos, sin, sc, True, 1e-6, False)
    assert raw[1].shape == (0,) and torch.equal(raw[0], out.detach())
    with torch.no_grad():
        again, norms = qr.qk_rope(xv, gains, cos, sin, sc, want_norms=True)
    assert torch.equal(again, out.detach()) and norms.shape == (B, h, n)
