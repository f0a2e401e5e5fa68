"""The whole model against a float64 reference written from the formulas (reference64.py).

Every feature the config has, through every attention backend that runs here: the full forward, a KV
cache filled in chunks (a prefix, then chunks of 1 and several tokens), cached generation, the static
decode step and its gradients, all equal to the float64 logits of one full pass (a causal model's logits
at position t depend on tokens <= t only). Tolerance: 1e-5 of the largest logit, about ten times the
float32 error seen here (~1e-6), far above float64 rounding.

On CPU, FlexAttention runs its (unfused) kernel only for Nq == Nk without gradients; a call with fewer
queries than keys (a chunk after a cache, a decode step) goes to SDPA and a call that needs gradients to
eager, by design (backends/flex.py). A spy counts the calls that really reached FlexAttention, so no case
claims flex where another backend ran. The Triton backend and the fused decode step run under the Triton
interpreter in a child process (interp_reference_cases.py) and on CUDA in the tests marked `cuda` below.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from interp_child import run_interpreter_cases
from reference64 import Reference64, randomize

from andromeda.model import Andromeda, from_name
from andromeda.model.decode import GraphedDecoder

TOL = 1e-5  # of the largest reference logit
N, PREFIX, CHUNKS = 40, 13, (1, 5, 1, 3, 17)  # 13 + 27 = 40 positions; crosses 16-key blocks
assert PREFIX + sum(CHUNKS) == N

# Together they cover every model feature; each is on in at least one config and off in another.
CONFIGS = {
    # the spec's features: ALiBi on 2 of 4 heads, xPos, token shift 1, one KV head, QK-norm with dim scale
    "spec": {},
    # GQA, ALiBi on 3 of 4 heads, plain rotary on 8 of 16 features with theta 500, positions interpolated 2x,
    # token shift 2, RMSNorm, SwiGLU without FFN biases, attention biases, no QK-norm
    "gqa_rotary_glu": dict(kv_heads=2, alibi_num_heads=3, rotary_xpos=False, rotary_pos_emb=True, rotary_dim=8,
                           rotary_theta=500.0, pos_interpolation_factor=2.0, shift_tokens=2, norm="rmsnorm",
                           ff_glu=True, ff_activation="silu", ff_bias=False, attn_bias=True, qk_norm=False,
                           qk_norm_dim_scale=False),
    # parallel blocks (one norm and one shift feed both branches), GQA, QK-norm without gains
    "parallel": dict(parallel_block=True, kv_heads=2, shift_tokens=2, qk_norm_dim_scale=False),
    # DeepNorm post-norm blocks, MHA, absolute positions only, tied embeddings, ReLU, an explicit FFN size
    "deepnorm_abs": dict(deepnorm=True, depth=3, kv_heads=None, alibi_pos_bias=False, alibi_num_heads=None,
                         rotary_xpos=False, use_abs_pos_emb=True, shift_tokens=0, attn_bias=True,
                         ff_activation="relu", ff_inner_dim=96, tie_embeddings=True),
    # steep xPos (scale base 16) on every feature, ALiBi on every head, interpolation 1.5, token shift 3,
    # QK-norm with its own logit scale
    "xpos_steep": dict(xpos_scale_base=16, rotary_dim=16, alibi_num_heads=None, pos_interpolation_factor=1.5,
                       shift_tokens=3, qk_norm_dim_scale=False, qk_norm_scale=6.0),
    # bidirectional: symmetric ALiBi |i - j|, rotary (xPos needs causal); full forward only
    "noncausal": dict(causal=False, rotary_xpos=False, rotary_pos_emb=True, alibi_num_heads=2),
}
CAUSAL = [n for n in CONFIGS if n != "noncausal"]
PRENORM = ["spec", "gqa_rotary_glu", "xpos_steep"]  # what the fused decode step runs
BACKENDS = ["eager", "sdpa", "flex"]


def build(name: str, backend: str = "auto", **extra) -> Andromeda:
    cfg = from_name("tiny", **{**CONFIGS[name], **extra}, attn_backend=backend)
    return randomize(Andromeda(cfg), zlib.crc32(name.encode())).eval()


def tokens_for(name: str, batch: int = 2, n: int = N, vocab: int = 320) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + n)
    return torch.randint(0, vocab, (batch, n), generator=g)


def reference(m: Andromeda, tokens: torch.Tensor) -> torch.Tensor:
    return Reference64(m.cfg.to_dict(), m.state_dict())(tokens)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |out - ref| over the largest |ref|."""
    out = out.detach().to("cpu", torch.float64)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def chunked_logits(m: Andromeda, tokens: torch.Tensor, prefix: int = PREFIX, chunks=CHUNKS) -> torch.Tensor:
    """Logits of every position from a cache: the prefix in one call, then each chunk through the cache."""
    cache = m.new_cache(tokens.shape[0], tokens.shape[1])
    outs, start = [], 0
    with torch.no_grad():
        for size in (prefix, *chunks):
            outs.append(m(tokens[:, start : start + size], cache=cache))
            start += size
    assert cache.length == tokens.shape[1]
    return torch.cat(outs, dim=1)


# ---- the reference itself -------------------------------------------------------------------------
def test_reference_alibi_slopes_are_press_et_al():
    from reference64 import alibi_slopes

    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    # 6 heads: the 4 of a power of two, then every other slope of 8 heads (2^-1, 2^-3)
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


# A model that ignored a feature would compute the reference with that feature off: each must move the
# reference logits by far more than the tolerance, or the parity tests could not see it missing.
FEATURE_OFF = {
    "spec": [dict(alibi_pos_bias=False, alibi_num_heads=None), dict(alibi_num_heads=None),
             dict(rotary_xpos=False, rotary_pos_emb=True), dict(shift_tokens=0), dict(qk_norm_dim_scale=False),
             dict(rotary_xpos=False)],
    "gqa_rotary_glu": [dict(pos_interpolation_factor=1.0), dict(rotary_theta=10000.0), dict(rotary_dim=16),
                       dict(shift_tokens=1), dict(kv_heads=4)],
    "parallel": [dict(qk_norm_scale=4.0), dict(alibi_num_heads=1)],
    "deepnorm_abs": [dict(use_abs_pos_emb=False)],
    "xpos_steep": [dict(xpos_scale_base=512), dict(shift_tokens=2), dict(pos_interpolation_factor=1.0)],
    "noncausal": [dict(causal=True)],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_sees_every_feature(name):
    m = build(name)
    tokens = tokens_for(name)
    state, cfg = m.state_dict(), m.cfg.to_dict()
    full = Reference64(cfg, state)(tokens)
    for off in FEATURE_OFF[name]:
        variant = dict(state)
        if off.get("kv_heads") == 4:  # query head h reading KV head h % 2 instead of h // 2: MHA, K/V tiled
            for key in [k for k in variant if ".to_k." in k or ".to_v." in k]:
                w = variant[key].unflatten(0, (2, -1))  # (2, D, ...)
                variant[key] = w.repeat(2, *[1] * (w.dim() - 1)).flatten(0, 1)
        moved = (Reference64({**cfg, **off}, variant)(tokens) - full).abs().max() / full.abs().max()
        assert moved > 100 * TOL, f"{name}: {off} moves the reference by only {moved:.1e}"


# ---- the model against it -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_forward_matches_float64_reference(name, backend, flex_calls):
    m = build(name, backend)
    tokens = tokens_for(name)
    with torch.no_grad():
        out = m(tokens)
    assert rel_err(out, reference(m, tokens)) <= TOL
    assert flex_calls == ([N] * m.cfg.depth if backend == "flex" else [])  # flex really ran, every layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CAUSAL)
def test_chunked_prefill_matches_float64_reference(name, backend, flex_calls):
    """Prefix of 13, then chunks of 1, 5, 1, 3 and 17 tokens through the KV cache. With flex, the prefix is
    FlexAttention's (asserted) and the chunks, having fewer queries than keys, are SDPA's."""
    m = build(name, backend)
    tokens = tokens_for(name)
    assert rel_err(chunked_logits(m, tokens), reference(m, tokens)) <= TOL
    assert flex_calls == ([PREFIX] * m.cfg.depth if backend == "flex" else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["spec", "gqa_rotary_glu", "parallel", "deepnorm_abs"])
def test_cached_generation_matches_float64_reference(name, backend):
    """Sampled generation through the cache: each step's logits are the reference's at that position."""
    m = build(name, backend)
    prompt = tokens_for(name, n=9)
    tokens, logits = m.generate(prompt, 12, temperature=1.0, top_k=50, return_logits=True,
                                generator=torch.Generator().manual_seed(1))
    assert rel_err(logits, reference(m, tokens)[:, 8:-1]) <= TOL


@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
@pytest.mark.parametrize("name", CAUSAL)
def test_static_decode_step_matches_float64_reference(name, attention):
    """The static-shape decode step (model/decode.py; on CPU the graph's body runs eagerly), teacher-forced
    through positions 13..39 after a prefill, and model.decode_step with a device position."""
    m = build(name)
    tokens = tokens_for(name)
    ref = reference(m, tokens)
    cache = m.new_cache(2, N + 2)
    with torch.no_grad():
        first = m(tokens[:, :PREFIX], cache=cache, logits="last")[:, -1]
    dec = GraphedDecoder(m, cache, attention=attention)
    steps = [first] + [dec.step(tokens[:, t : t + 1]) for t in range(PREFIX, N - 4)]
    pos = torch.tensor([N - 4])
    steps += [m.decode_step(tokens[:, t : t + 1], pos, cache) for t in range(N - 4, N)]  # the last 4
    assert pos.tolist() == [N] and cache.length == N
    assert rel_err(torch.stack(steps, dim=1), ref[:, PREFIX - 1 :]) <= TOL  # positions 12..39


@pytest.mark.parametrize("name", ["spec", "parallel", "deepnorm_abs"])
def test_generate_with_cuda_graph_flag_matches_float64_reference(name):
    """generate(cuda_graph=True): the prompt through the forward, the steps through the static step."""
    m = build(name)
    tokens, logits = m.generate(tokens_for(name, n=9), 15, return_logits=True, cuda_graph=True)
    assert not logits.is_inference()
    assert rel_err(logits, reference(m, tokens)[:, 8:-1]) <= TOL


# ReLU's derivative jumps at 0: a pre-activation within float32 rounding of 0 takes either side (seen here:
# -1.0e-7 with eager, +7.5e-8 with SDPA, one unit's gradient flipped), so gradients are compared on GELU.
SMOOTH = {n: dict(ff_activation="gelu") for n, c in CONFIGS.items() if c.get("ff_activation") == "relu"}


@pytest.mark.parametrize("backend", ["eager", "sdpa"])  # flex: a call that needs gradients runs eager on CPU
@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_float64_reference(name, backend):
    """d(next-token loss)/d(every weight), against autograd through the float64 reference."""
    m = build(name, backend, **SMOOTH.get(name, {})).train()
    tokens = tokens_for(name, n=24)
    m.loss(tokens).backward()
    ref = Reference64(m.cfg.to_dict(), m.state_dict(), grad=True)
    logits = ref(tokens)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    worst = 0.0
    for key, p in m.named_parameters():
        want = ref.w[key].grad
        err = ((p.grad.double() - want).norm() / want.norm().clamp_min(1e-30)).item()
        assert want.norm() > 0, key
        worst = max(worst, err)
        assert err <= 1e-4, f"{key}: relative gradient error {err:.1e}"
    assert worst <= 2e-5


# ---- Triton: the interpreter here, CUDA below -------------------------------------------------------
# what the child process runs under TRITON_INTERPRET=1 (interp_reference_cases.py imports these)
INTERP = dict(full=list(CONFIGS), chunked=CAUSAL, grads=["spec", "gqa_rotary_glu"], fused=PRENORM)


def test_triton_and_fused_decode_match_float64_reference_in_interpreter():
    pytest.importorskip("triton")
    run_interpreter_cases("interp_reference_cases.py", sum(map(len, INTERP.values())))
