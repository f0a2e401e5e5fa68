"""GPU-only checks: backends and cached generation on CUDA (skipped without a GPU)."""

import pytest
import torch

from andromeda.model import Andromeda, backends, from_name
from andromeda.model.positional import head_slopes

pytestmark = pytest.mark.cuda


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", ["sdpa", "flex"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("n,hkv", [(300, 1), (1024, 2), (129, 8)])
def test_backend_parity_on_cuda(name, dtype, tol, n, hkv):
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(n)
    h, d = 8, 64
    q = torch.randn(2, h, n, d, device="cuda", generator=g).to(dtype)
    k = torch.randn(2, hkv, n, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(2, hkv, n, d, device="cuda", generator=g).to(dtype)
    slopes = head_slopes(h, 4).cuda()
    ref = backends.get("eager")(q.float(), k.float(), v.float(), causal=True, scale=d**-0.5, alibi_slopes=slopes)
    out = backends.get(name)(q, k, v, causal=True, scale=d**-0.5, alibi_slopes=slopes)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _rel(out, ref) < tol


@pytest.mark.parametrize("backend", ["sdpa", "flex", "eager", "triton"])
def test_cached_generation_on_cuda(backend):
    """Each cached step's logits against the float64 reference (tests/model/reference64.py, written from the
    formulas) on the generated sequence: the prompt's 40 positions go through one prefill, the 16 steps
    through the KV cache (flex on CUDA runs its own kernel for the prefill; SDPA takes single-query steps)."""
    from reference64 import Reference64

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = from_name("tiny", dim=128, dim_head=32, heads=4, attn_backend=backend)
    m = Andromeda(cfg).cuda().eval()
    prompt = torch.randint(0, 256, (2, 40), device="cuda")
    tokens, step_logits = m.generate(prompt, 16, return_logits=True)
    ref = Reference64(m.cfg.to_dict(), m.state_dict())(tokens.cpu())  # (B, N, V) float64
    want = ref[:, 40 - 1: 40 + 16 - 1]  # the logits each step sampled from
    err = (step_logits.double().cpu() - want).abs().max() / want.abs().max()
    assert err < 1e-5, f"{backend}: {err:.2e} of the largest logit"


def test_auto_picks_a_fused_backend_for_alibi_on_cuda():
    m = Andromeda(from_name("tiny", dim=128, dim_head=32)).cuda()
    assert m.blocks[0].attn.backend(torch.device("cuda"), torch.bfloat16).name in ("flex", "triton")
