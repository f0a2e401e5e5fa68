"""Run by tests/model/test_fused_decode.py in a child pytest with TRITON_INTERPRET=1 (not collected directly)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_fused_decode import INTERP_CONFIGS, drive, tiny_model  # noqa: E402  (same directory: on sys.path)

from andromeda.model import fused_decode  # noqa: E402
from andromeda.model.backends import DecodeTuning  # noqa: E402


@pytest.mark.parametrize("name", list(INTERP_CONFIGS))
def test_fused_step_matches_the_torch_step_and_the_forward(name):
    drive(tiny_model(**INTERP_CONFIGS[name]), "cpu", tol=2e-5)


def test_long_cache_splits_hold_several_key_blocks():
    """2100 positions: 66 splits of two 16-key blocks (splits are capped at 128), merged in one pass; the
    steps' positions (13..19) fall in both blocks of the first split."""
    drive(tiny_model(), "cpu", tol=2e-5, max_len=2100)


def test_one_split_holds_every_key_block(tune):
    """DecodeTuning.max_splits=1: one program streams both 16-key blocks of a 32-slot cache; the steps'
    positions (13..19) cross from the first block into the second."""
    tune(DecodeTuning(max_splits=1))
    drive(tiny_model(), "cpu", tol=2e-5)


@pytest.mark.parametrize("setting", [None, dict(BLOCK_N=8, BLOCK_K=16), dict(BLOCK_N=4, BLOCK_K=64)],
                         ids=["default", "8x16", "4x64-past-K"])
@pytest.mark.parametrize("pre", [1, 4])
def test_gemv_epilogues_match_torch(setting, pre, tune):
    """The GEMV kernel alone: three stacked weights with biases, each activation, a GLU gate, a residual;
    K blocks that divide K or not, one wider than K; one K tile loaded before the wait on the previous
    kernel, or up to four (as many as cover K)."""
    torch.manual_seed(0)
    tune(DecodeTuning(gemv=setting))

    def gemv(x, out, lins, **kw):
        fused_decode.gemv(x, out, lins, interp=True, pre=pre, **kw)

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
