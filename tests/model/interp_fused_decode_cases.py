"""Run by tests/model/test_fused_decode.py in a child pytest with TRITON_INTERPRET=1 (not collected directly)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_fused_decode import INTERP_CONFIGS, drive, tiny_model  # noqa: E402  (same directory: on sys.path)

from andromeda.model import fused_decode  # noqa: E402


@pytest.mark.parametrize("name", list(INTERP_CONFIGS))
def test_fused_step_matches_the_torch_step_and_the_forward(name):
    drive(tiny_model(**INTERP_CONFIGS[name]), "cpu", tol=2e-5)


def test_long_cache_splits_hold_several_key_blocks():
    """2100 positions: 66 splits of two 16-key blocks (splits are capped at 128), merged in one pass; the
    steps' positions (13..19) fall in both blocks of the first split."""
    drive(tiny_model(), "cpu", tol=2e-5, max_len=2100)


@pytest.mark.parametrize("setting", [None, dict(BLOCK_N=8, BLOCK_K=16), dict(BLOCK_N=4, BLOCK_K=64)],
                         ids=["default", "8x16", "4x64-past-K"])
def test_gemv_epilogues_match_torch(setting, monkeypatch):
    """The GEMV kernel alone: three stacked weights with biases, each activation, a GLU gate, a residual;
    K blocks that divide K or not, one wider than K."""
    torch.manual_seed(0)
    monkeypatch.setattr(fused_decode, "GEMV_OVERRIDE", dict(setting or {}))

    def gemv(x, out, lins, **kw):
        fused_decode.gemv(x, out, lins, interp=True, **kw)

    lins = [torch.nn.Linear(40, n) for n in (37, 16, 5)]  # K = 40: a partial last K block; odd row counts
    x = torch.randn(40)
    out = torch.empty(58)
    gemv(x, out, lins)
    want = torch.cat([lin(x) for lin in lins]).detach()
    assert torch.allclose(out, want, atol=1e-5)
    lin = lins[0]
    res, mul = torch.randn(37), torch.randn(37)
    for act, fn in ((1, torch.nn.functional.gelu), (2, torch.nn.functional.silu), (3, torch.relu)):
        out = torch.empty(37)
        gemv(x, out, [lin], act=act)
        assert torch.allclose(out, fn(lin(x)).detach(), atol=1e-5), act
    out = res.clone()
    gemv(x, out, [lin], mul=mul, res=out)  # the residual read and written in place
    assert torch.allclose(out, (lin(x) * mul + res).detach(), atol=1e-5)


def test_argmax_in_the_lm_head_takes_the_first_of_tied_rows():
    arg = (torch.full((1,), -(2**63), dtype=torch.int64), torch.zeros(1, dtype=torch.int32),
           torch.zeros(1, 1, dtype=torch.long))
    x = torch.randn(40)
    for sign, top in ((1.0, 0.02), (-1.0, 0.001)):  # the largest output positive, then negative
        lin = torch.nn.Linear(40, 37, bias=False)
        scales = 0.002 + 0.01 * torch.rand(37)
        scales[[9, 30]] = top  # rows 9 and 30 tie for the largest output
        with torch.no_grad():
            lin.weight.copy_(sign * scales[:, None] * (x / x.norm())[None, :])
        out = torch.empty(37)
        for _ in range(2):  # the kernel re-arms its key and counter for the next call
            fused_decode.gemv(x, out, [lin], argmax=arg, interp=True)
            assert arg[2].item() == out.argmax().item() == 9 and out[9] == out[30]
            assert arg[0].item() == -(2**63) and arg[1].item() == 0


def _norm_and_shift_reference(row, mod, state):
    """float64 norm of row (rounded to its dtype as torch rounds) and TokenShift's rule written out: feature
    chunk k (1..s) from state row s - k; the new state: rows up one, the normalized row last."""
    r = row.double()
    if isinstance(mod, torch.nn.RMSNorm):
        y = r * torch.rsqrt(r.pow(2).mean() + mod.eps) * mod.weight.double()
    else:
        y = (r - r.mean()) * torch.rsqrt(r.var(unbiased=False) + mod.eps) * mod.weight.double() + mod.bias.double()
    y = y.to(row.dtype)
    if state is None:
        return y, None
    s, n = state.shape[1], row.numel()
    c, xn = n // (s + 1), y.clone()
    for k in range(1, s + 1):
        xn[k * c:(k + 1) * c] = state[0, s - k, k * c:(k + 1) * c]
    return xn, torch.cat([state[0, 1:], y[None]])[None]


@pytest.mark.parametrize("kind,shifts", [("layernorm", 1), ("rmsnorm", 2), ("layernorm", 0)])
def test_last_program_norms_the_output_and_moves_the_shift_state(kind, shifts):
    """A GEMV with prep (as the residual GEMVs run it): after out = W x + res, xn = token shift of norm(out)
    and the shift state moves on; twice, so the second call reads the state the first left and finds the
    program count re-armed. 37 outputs (10 programs of 4 rows) over a dim that does not split evenly."""
    torch.manual_seed(1)
    n = 37
    mod = torch.nn.RMSNorm(n, eps=1e-6) if kind == "rmsnorm" else torch.nn.LayerNorm(n)
    with torch.no_grad():
        mod.weight.uniform_(0.5, 1.5)
        if kind == "layernorm":
            mod.bias.uniform_(-0.5, 0.5)
    state = torch.randn(1, shifts, n) if shifts else None
    lin = torch.nn.Linear(40, n, bias=False)
    done = torch.zeros(1, dtype=torch.int32)
    for _ in range(2):
        x, out, xn = torch.randn(40), torch.randn(n), torch.empty(n)
        want_out = (lin(x) + out).detach()
        want_xn, want_state = _norm_and_shift_reference(want_out, mod, state)
        fused_decode.gemv(x, out, [lin], res=out, prep=(fused_decode.Norm(mod, state), xn, done), interp=True)
        assert torch.allclose(out, want_out, atol=1e-5)
        assert torch.allclose(xn, want_xn.float(), atol=1e-5)
        if shifts:
            assert torch.allclose(state, want_state.float(), atol=1e-5)
        assert done.item() == 0


def test_norm_row_alone_matches_the_reference():
    torch.manual_seed(2)
    mod, state = torch.nn.LayerNorm(48), torch.randn(1, 1, 48)
    x, xn = torch.randn(48), torch.empty(48)
    want_xn, want_state = _norm_and_shift_reference(x, mod, state)
    fused_decode.norm_row(x, xn, fused_decode.Norm(mod, state), interp=True)
    assert torch.allclose(xn, want_xn.float(), atol=1e-5) and torch.allclose(state, want_state.float(), atol=1e-5)
