"""On CUDA: the Triton attention backend and the fused decode step against the float64 reference.

The same configs, tokens and weights as test_reference_parity.py (whose CPU tests cover eager, SDPA, flex
and the interpreter). float32 is held to the same 1e-5 of the largest logit (TF32 off: Triton's float32 dots
are IEEE); bf16 to what bf16 can do, no worse than the torch path in the same dtype against the same truth.
"""

from __future__ import annotations

import pytest
import torch
from reference64 import Reference64
from test_reference_parity import CAUSAL, CONFIGS, PRENORM, TOL, N, build, chunked_logits, rel_err, tokens_for

from andromeda.model.decode import GraphedDecoder

pytestmark = pytest.mark.cuda
pytest.importorskip("triton")

CUDA = torch.device("cuda")
BF16_TOL = 3e-2  # bf16 rounds to 2^-9 relative; logits after two blocks keep about this much


@pytest.fixture(autouse=True)
def _ieee_float32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def on_cuda(name: str, backend: str = "auto", dtype: torch.dtype = torch.float32, **extra):
    return build(name, backend, **extra).to(CUDA, dtype)


def truth(m, tokens) -> torch.Tensor:
    """Float64 logits of the model's own weights (bf16 weights as they are: the truth of this model)."""
    return Reference64(m.cfg.to_dict(), m.state_dict())(tokens.cpu())


def uses(m, name: str, dtype: torch.dtype = torch.float32) -> bool:
    return m.blocks[0].attn.backend(CUDA, dtype).name == name


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_backend_matches_float64_reference_on_cuda(name):
    """float32: the full forward, then (causal configs) the prefix of 13 and chunks of 1, 5, 1, 3 and 17
    through the cache, and sampled generation."""
    m = on_cuda(name, "triton")
    assert uses(m, "triton")
    tokens = tokens_for(name).to(CUDA)
    want = truth(m, tokens)
    with torch.no_grad():
        assert rel_err(m(tokens), want) <= TOL
    if name in CAUSAL:
        assert rel_err(chunked_logits(m, tokens), want) <= TOL
        prompt = tokens[:, :9]
        out, logits = m.generate(prompt, 12, temperature=1.0, return_logits=True,
                                 generator=torch.Generator(device=CUDA).manual_seed(0))
        assert rel_err(logits, truth(m, out)[:, 8:-1]) <= TOL


# chunks of 1, 2 and 17 start at cache lengths L, L + 1 and L + 3: L = 1020 and 1022 (1084, 1086) put a chunk
# of 2 or 17 right after a cache whose length + 1 is a multiple of 64 and 128 (the float32 and bf16 BLOCK_N)
LONG = [1000, 1019, 1020, 1021, 1022, 1023, 1024, 1025, 1084, 1086, 1087, 1100]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cache_len", LONG)
def test_triton_chunks_after_a_long_cache_match_float64_reference_on_cuda(cache_len, dtype):
    """Issue 23's reproducer at the model level: chunks of 1, 2 and 17 tokens after a cache of ~1K positions,
    where the kernel skips far ALiBi key blocks (>= 1024 keys) and (cache + 1) % BLOCK_N == 0 once left a
    tile's first row without a key: NaN. Every logit finite; float32 within TOL of float64, bf16 within
    BF16_TOL or 1.5x eager's bf16 error."""
    m = on_cuda("spec", "triton", dtype)
    tokens = tokens_for("spec", batch=1, n=cache_len + 20).to(CUDA)
    want = truth(m, tokens)[:, cache_len:]
    got = chunked_logits(m, tokens, prefix=cache_len, chunks=(1, 2, 17))[:, cache_len:].float()
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        assert rel_err(got, want) <= TOL
    else:
        base = on_cuda("spec", "eager", dtype)
        base.load_state_dict(m.state_dict())
        base_got = chunked_logits(base, tokens, prefix=cache_len, chunks=(1, 2, 17))[:, cache_len:].float()
        err, base_err = rel_err(got, want), rel_err(base_got, want)
        assert err <= max(BF16_TOL, 1.5 * base_err), (err, base_err)


@pytest.mark.parametrize("name,n,extra", [
    ("spec", N, {}),
    ("gqa_rotary_glu", N, {}),
    # the Hopper (Gluon) forward: bf16, head dim 128, causal self-attention over whole 128-row tiles
    ("spec", 256, dict(dim=256, dim_head=128)),
])
def test_triton_backend_bf16_against_float64_reference_on_cuda(name, n, extra):
    """bf16 triton against the float64 truth of the same bf16 weights: within BF16_TOL, or no worse than 1.5x
    eager's bf16 error (eager computes attention in float32)."""
    m = on_cuda(name, "triton", torch.bfloat16, **extra)
    base = on_cuda(name, "eager", torch.bfloat16, **extra)
    base.load_state_dict(m.state_dict())
    assert uses(m, "triton", torch.bfloat16)
    tokens = tokens_for(name, batch=1, n=n).to(CUDA)
    want = truth(m, tokens)
    with torch.no_grad():
        err, base_err = rel_err(m(tokens).float(), want), rel_err(base(tokens).float(), want)
    assert err <= max(BF16_TOL, 1.5 * base_err), (err, base_err)
    if name in CAUSAL:
        err = rel_err(chunked_logits(m, tokens, prefix=n - 27).float()[:, n - 27 :], want[:, n - 27 :])
        assert err <= max(BF16_TOL, 1.5 * base_err), (err, base_err)


# the fused decode step runs pre-norm blocks; "heads24" is the andromeda preset's attention (24 heads of 128 on
# one KV head, ALiBi on 12) with a cache of 600 positions: several key blocks a split
FUSED = {name: (name, N, {}) for name in PRENORM}
FUSED["heads24"] = ("spec", 600, dict(dim=256, heads=24, dim_head=128, alibi_num_heads=12, depth=1))


@pytest.mark.parametrize("key", list(FUSED))
def test_fused_decode_step_matches_float64_reference_on_cuda(key):
    """float32, batch 1: the fused Triton step in a CUDA graph (GraphedDecoder's auto choice), teacher-forced
    through the last 20 positions after a prefill; then generate(cuda_graph=True), which takes the same step."""
    name, n, extra = FUSED[key]
    m = on_cuda(name, **extra)
    tokens = tokens_for(name, batch=1, n=n).to(CUDA)
    want = truth(m, tokens)
    prefix = n - 20
    cache = m.new_cache(1, n)
    with torch.no_grad():
        first = m(tokens[:, :prefix], cache=cache, logits="last")[:, -1]
    dec = GraphedDecoder(m, cache)
    assert dec.kernels == "triton" and dec.graph is not None, dec.kernels_reason
    steps = [first] + [dec.step(tokens[:, t : t + 1]) for t in range(prefix, n)]
    assert rel_err(torch.stack(steps, dim=1), want[:, prefix - 1 :]) <= TOL
    out, logits = m.generate(tokens[:, :prefix], 20, return_logits=True, cuda_graph=True)
    assert rel_err(logits, truth(m, out)[:, prefix - 1 : -1]) <= TOL


@pytest.mark.parametrize("key", list(FUSED))
def test_fused_decode_step_bf16_against_float64_reference_on_cuda(key):
    """bf16: the fused step and the torch step (kernels="torch") against the float64 truth of the same bf16
    weights; the fused one within BF16_TOL or no worse than 1.5x the torch step's error."""
    name, n, extra = FUSED[key]
    m = on_cuda(name, dtype=torch.bfloat16, **extra)
    tokens = tokens_for(name, batch=1, n=n).to(CUDA)
    want = truth(m, tokens)
    prefix = n - 20
    outs = {}
    for kernels in ("triton", "torch"):
        cache = m.new_cache(1, n)
        with torch.no_grad():
            m(tokens[:, :prefix], cache=cache)
        dec = GraphedDecoder(m, cache, kernels=kernels)
        assert dec.graph is not None
        outs[kernels] = torch.stack([dec.step(tokens[:, t : t + 1]) for t in range(prefix, n - 1)], dim=1)
    err, base_err = (rel_err(outs[k].float(), want[:, prefix:-1]) for k in ("triton", "torch"))
    assert err <= max(BF16_TOL, 1.5 * base_err), (err, base_err)
