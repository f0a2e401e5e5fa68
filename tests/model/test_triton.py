"""Our Triton flash-attention kernel against eager: under the Triton interpreter on CPU (CI), on CUDA when present.

Triton decides at import whether @triton.jit interprets, so the interpreter cases run in a child
pytest started with TRITON_INTERPRET=1 (tests/model/interp_triton_cases.py).
"""

import dataclasses

import pytest
import torch
from interp_child import run_interpreter_cases

from andromeda.model import backends
from andromeda.model.positional import head_slopes

pytest.importorskip("triton")

CASES = [
    # heads, kv_heads, nq, nk, causal, alibi_heads (the first ones; < 0: the last ones), head_dim, scale
    (4, 1, 40, 40, True, 2, 16, None),  # MQA, ALiBi on half the heads, length not a multiple of the block
    (4, 2, 33, 50, True, 0, 32, None),  # GQA, queries after a cache (bottom-right causal)
    (2, 2, 20, 20, False, 1, 16, None),  # non-causal, symmetric ALiBi
    (4, 1, 1, 29, True, 4, 16, 10.0),  # one decode step, QK-norm logit scale
    (2, 1, 37, 37, True, 2, 64, 10.0),  # head dim 64, QK-norm scale
    (2, 1, 20, 34, True, 1, 16, None),  # offset 14: a tile's first query sits just before a key-block edge
    (4, 1, 24, 24, True, -3, 16, None),  # ALiBi on the last 3 heads: not the model's layout, one launch
]

# interpreter launch settings: both tile load paths (TMA descriptors, pointers) and unequal blocks
INTERP_CONFIGS = [dict(BLOCK_M=16, BLOCK_N=16, TMA=True), dict(BLOCK_M=16, BLOCK_N=32, TMA=False),
                  dict(BLOCK_M=32, BLOCK_N=16, TMA=True)]


def check(case, device, dtype, tol, **kw):
    return _check(case, device, dtype, tol, **kw)


def _check(case, device, dtype, tol, slopes=None, gain=1.0):
    """slopes: ALiBi slopes other than head_slopes' (then alibi_heads is ignored); gain multiplies q and k."""
    h, hkv, nq, nk, causal, na, d, scale = case
    scale = scale or d**-0.5
    g = torch.Generator(device=device).manual_seed(nq * 31 + nk)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device).to(dtype).requires_grad_()

    q, k, v = rnd(2, h, nq, d), rnd(2, hkv, nk, d), rnd(2, hkv, nk, d)
    if scale == 10.0:  # QK-norm-like inputs
        q, k = [(t / t.norm(dim=-1, keepdim=True)).detach().requires_grad_() for t in (q, k)]
    if gain != 1.0:
        q, k = [(t * gain).detach().requires_grad_() for t in (q, k)]
    if slopes is not None:
        slopes = torch.tensor(slopes, device=device)
    elif na:
        slopes = head_slopes(h, abs(na)).to(device)
        if na < 0:
            slopes = slopes.flip(0)
    ref = backends.get("eager")(q.float(), k.float(), v.float(), causal=causal, scale=scale, alibi_slopes=slopes)
    out = backends.get("triton")(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes)
    assert out.dtype == dtype and out.shape == ref.shape
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out.float(), (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    assert rel(out, ref) < tol, "output"
    for name, a, b in zip("qkv", got, want, strict=True):
        assert rel(a, b) < tol, f"d{name}"


def test_triton_matches_eager_in_interpreter():
    # the cases at every launch setting, plus the fallback test and the 6 skipping tests
    run_interpreter_cases("interp_triton_cases.py", len(CASES) * len(INTERP_CONFIGS) + 12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1.5e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("case", CASES + [(24, 1, 1000, 1000, True, 12, 128, 10.0),
                                          (8, 2, 777, 777, True, 4, 64, None)])
def test_triton_matches_eager_on_cuda(case, dtype, tol):
    _check(case, "cuda", dtype, tol)


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = backends.AttentionSpec(heads=4, kv_heads=1, dim_head=64)
    assert "CUDA" in backends.get("triton").supports(spec, torch.device("cpu"))
    assert "head dim" in backends.get("triton").supports(
        backends.AttentionSpec(heads=4, kv_heads=1, dim_head=80), torch.device("cuda"))


@pytest.mark.parametrize("capability,dtype,first,tma", [
    ((9, 0), torch.bfloat16, (128, 128), True),  # Hopper: the tuned 128x128 forward, TMA loads
    ((9, 0), torch.float32, (64, 64), True),  # 4-byte tiles: 128x128 would not fit
    ((8, 0), torch.bfloat16, (64, 64), False),  # A100: 164 KB of shared memory, no TMA
])
def test_launch_candidates_follow_the_gpu(monkeypatch, tune, capability, dtype, first, tma):
    from andromeda.model.backends import TritonTuning, triton_flash

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    fwd = triton_flash._candidates(torch.device("cuda"), "fwd", dtype)
    assert (fwd[0]["BLOCK_M"], fwd[0]["BLOCK_N"]) == first and all(c["TMA"] == tma for c in fwd)
    assert fwd[-1]["BLOCK_M"] == 32 and not fwd[-1]["WS"]  # the smallest fallback comes last
    tune(TritonTuning(config_override={"bwd": dict(BLOCK_M=32, BLOCK_N=64, WS=True)}))
    bwd, dq = (triton_flash._candidates(torch.device("cuda"), k, dtype) for k in ("bwd", "dq"))
    assert [(c["BLOCK_M"], c["BLOCK_N"]) for c in bwd + dq] == [(32, 64), (64, 32)]  # dQ: transposed
    assert all("WS" not in c and c["TMA"] == tma for c in bwd + dq)


@pytest.mark.parametrize("slopes,prefix", [
    ([0.5, 0.25, 0.0, 0.0], 2),  # the model's layout: ALiBi on the first heads
    ([0.5, 0.25, 0.125, 0.0625], 4),
    ([0.0, 0.0, 0.0, 0.0], 0),
    ([0.0, 0.5, 0.0, 0.0], None),  # any other pattern: no split
    ([0.5, 0.0, 0.25, 0.0], None),
])
def test_alibi_heads_split_into_launches(slopes, prefix):
    """Heads with ALiBi and heads without launch separately only where the slopes are a prefix; the plan
    must cover every head exactly once, with ALiBi on every head whose slope is nonzero."""
    from andromeda.model.backends import triton_flash

    t = torch.tensor(slopes)
    assert triton_flash._alibi_prefix(t) == prefix
    runs = triton_flash._head_runs(len(slopes), True, prefix)
    covered = [(h, ab) for h0, n, ab in runs for h in range(h0, h0 + n)]
    assert [h for h, _ in covered] == list(range(len(slopes)))
    assert all(ab for (_, ab), s in zip(covered, slopes, strict=True) if s != 0)
    assert len(runs) == (2 if prefix not in (None, 0, len(slopes)) else 1)
    assert triton_flash._head_runs(len(slopes), False, prefix) == ((0, len(slopes), False),)


def test_alibi_prefix_is_read_again_after_an_in_place_change():
    from andromeda.model.backends import triton_flash

    t = torch.tensor([0.5, 0.0, 0.0])
    assert triton_flash._alibi_prefix(t) == 1
    t[1] = 0.25  # bumps the tensor's version: the cached answer must not be used
    assert triton_flash._alibi_prefix(t) == 2


@pytest.mark.parametrize("g,runs,want", [
    (24, ((0, 12, True), (12, 12, False)), 3),  # the 2.5B preset: MQA, ALiBi on 12 of 24 heads
    (4, ((0, 2, True), (2, 2, False)), 2),  # a launch of 2 heads caps it
    (2, ((0, 4, False),), 2),
    (1, ((0, 8, False),), 1),  # MHA: each program its own head
    (24, ((0, 5, True), (5, 19, False)), 1),  # 5 ALiBi heads: no larger c divides both launches
])
def test_dkdv_programs_sum_heads_of_one_group_and_launch(g, runs, want):
    from andromeda.model.backends import triton_flash

    c = triton_flash._group_heads(g, runs)
    assert c == want and g % c == 0 and all(h0 % c == 0 and n % c == 0 for h0, n, _ in runs)


def test_key_norm_prefix_max_bounds_every_key_up_to_each_block_end():
    from andromeda.model.backends import triton_flash

    k = torch.randn(2, 3, 150, 8) * torch.linspace(2.0, 0.5, 150).view(1, 1, -1, 1)  # norms fall with position
    got = triton_flash._key_norm_prefix_max(k)
    kb = triton_flash.KNORM_BLOCK
    norms = k.double().norm(dim=-1).reshape(6, 150)
    want = torch.stack([norms[:, : min(150, (c + 1) * kb)].amax(-1) for c in range(-(-150 // kb))], -1)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_alibi_prefix_of_an_inference_mode_tensor():
    """Inference tensors keep no version counter: the prefix is still read (and cached)."""
    from andromeda.model.backends import triton_flash

    with torch.inference_mode():
        t = torch.tensor([0.5, 0.25, 0.0])
        assert triton_flash._alibi_prefix(t) == 2 and triton_flash._alibi_prefix(t) == 2


@pytest.mark.cuda
@pytest.mark.parametrize("qk_norm", [False, True])
def test_far_key_skipping_changes_nothing_on_cuda(tune, qk_norm):
    """At 2K keys the forward and backward skip key blocks on the steep ALiBi heads (what is skipped weighs
    under 2^-32 of a row's softmax sum). The forward also runs the diagonal blocks first, so its bf16 output
    rounds differently from the kernel's without skipping: output and gradients may differ from it by bf16
    rounding, and must be as close to float32 eager."""
    from andromeda.model.backends import TritonTuning

    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(1, 24, 2048, 128, device="cuda", generator=g)
    k, v = (torch.randn(1, 1, 2048, 128, device="cuda", generator=g) for _ in range(2))
    grad = torch.randn(1, 24, 2048, 128, device="cuda", generator=g)
    scale = 10.0 if qk_norm else 128**-0.5
    if qk_norm:
        q, k = (t / t.norm(dim=-1, keepdim=True) for t in (q, k))
    slopes = head_slopes(24, 12).cuda()

    def run(backend, dtype):
        x = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = backends.get(backend)(*x, causal=True, scale=scale, alibi_slopes=slopes)
        return (out, *torch.autograd.grad(out, x, grad.to(dtype)))

    skipped = run("triton", torch.bfloat16)
    tune(TritonTuning(skip_far=False))
    full = run("triton", torch.bfloat16)
    ref = run("eager", torch.float32)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    for name, s, f, r in zip(("out", "dq", "dk", "dv"), skipped, full, ref, strict=True):
        assert rel(s, f) < 4e-3, name  # bf16's unit roundoff is 3.9e-3
        assert rel(s, r) < 1.1 * rel(f, r) and rel(f, r) < 1.5e-2, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the Hopper forward runs on sm90 GPUs only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alibi_heads", [0, 4, 8])
def test_sm90_forward_matches_the_triton_forward(tune, dtype, alibi_heads):
    """The Gluon forward (2 x 64-row query tiles, 128-key blocks; ALiBi heads skip far blocks from bounds taken
    before the loop) against the Triton forward and float32 eager: output, and the gradients, which the
    backward computes from the forward's stored log-sum-exp. 1024 tokens: 8 query tiles, the longest with 8
    key blocks, several laps of the 2-buffer ring."""
    from andromeda.model.backends import TritonTuning, triton_flash, tuning

    g = torch.Generator(device="cuda").manual_seed(alibi_heads)
    q = torch.randn(2, 8, 1024, 128, device="cuda", generator=g)
    k, v = (torch.randn(2, 1, 1024, 128, device="cuda", generator=g) for _ in range(2))
    grad = torch.randn(2, 8, 1024, 128, device="cuda", generator=g)
    slopes = head_slopes(8, alibi_heads).cuda() if alibi_heads else None
    tune(TritonTuning(skip_min_keys=0))

    def run(backend, dt):
        x = [t.to(dt).requires_grad_() for t in (q, k, v)]
        out = backends.get(backend)(*x, causal=True, scale=128**-0.5, alibi_slopes=slopes)
        return (out, *torch.autograd.grad(out, x, grad.to(dt)))

    assert triton_flash._sm90_fits(q.to(dtype), k.to(dtype), v.to(dtype), True, 128**-0.5)
    sm90 = run("triton", dtype)
    again = run("triton", dtype)  # launched through the cached compiled kernels this time
    for a, b in zip(sm90, again, strict=True):
        assert torch.equal(a, b)
    tune(dataclasses.replace(tuning(TritonTuning), sm90_forward=False))
    tri = run("triton", dtype)
    ref = run("eager", torch.float32)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    for name, s, t, r in zip(("out", "dq", "dk", "dv"), sm90, tri, ref, strict=True):
        assert rel(s, t) < 4e-3, name  # both round to 16 bits, in different orders
        assert rel(s, r) < 1.1 * rel(t, r) + 1e-4 and rel(s, r) < 1.5e-2, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the Hopper forward runs on sm90 GPUs only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alibi_heads", [0, 4])
@pytest.mark.parametrize("nq", [512, 128])
def test_sm90_forward_after_earlier_keys_matches_the_triton_forward(tune, dtype, alibi_heads, nq):
    """TritonTuning.sm90_offset: the Gluon forward for the last nq queries of 1024 keys (offsets of whole
    128-row tiles and 128-key blocks: a chunk after a KV cache, a long prefill's later xPos blocks) against the
    Triton forward and float32 eager, output and gradients; a 1088-key call (offset 576, not a whole block
    past the tiles) keeps the Triton forward."""
    from andromeda.model.backends import TritonTuning, triton_flash, tuning

    g = torch.Generator(device="cuda").manual_seed(alibi_heads + nq)
    q = torch.randn(2, 8, nq, 128, device="cuda", generator=g)
    k, v = (torch.randn(2, 1, 1024, 128, device="cuda", generator=g) for _ in range(2))
    grad = torch.randn(2, 8, nq, 128, device="cuda", generator=g)
    slopes = head_slopes(8, alibi_heads).cuda() if alibi_heads else None
    tune(TritonTuning(skip_min_keys=0, sm90_offset=True))

    def run(backend, dt):
        x = [t.to(dt).requires_grad_() for t in (q, k, v)]
        out = backends.get(backend)(*x, causal=True, scale=128**-0.5, alibi_slopes=slopes)
        return (out, *torch.autograd.grad(out, x, grad.to(dt)))

    assert triton_flash._sm90_fits(q.to(dtype), k.to(dtype), v.to(dtype), True, 128**-0.5)
    longer = torch.zeros(2, 1, 1088, 128, device="cuda", dtype=dtype)
    assert not triton_flash._sm90_fits(q.to(dtype), longer, longer, True, 128**-0.5)
    sm90 = run("triton", dtype)
    tune(dataclasses.replace(tuning(TritonTuning), sm90_offset=False))
    assert not triton_flash._sm90_fits(q.to(dtype), k.to(dtype), v.to(dtype), True, 128**-0.5)
    tri = run("triton", dtype)
    ref = run("eager", torch.float32)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    for name, s, t, r in zip(("out", "dq", "dk", "dv"), sm90, tri, ref, strict=True):
        assert rel(s, t) < 4e-3, name
        assert rel(s, r) < 1.1 * rel(t, r) + 1e-4 and rel(s, r) < 1.5e-2, name
