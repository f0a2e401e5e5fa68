"""Positions far past what one xPos reference can hold in float32 (issue: long context).

xPos is anchored per block of positions (positional.XPos), so a tiny model with xPos and ALiBi gives finite
logits at positions near 200,000 and 256,000 that equal a float64 reference computing zeta^((i - j) / base)
from each pair's distance (reference64.py), and that depend on positions only through i - j: the same tokens
at offset 0 and at offset 200,000 give the same logits (no earlier context: forward(start=), or a cache placed
there with new_cache(start=)). Prefill through the cache, whole or in chunks, gives the forward's logits.
"""

from __future__ import annotations

import pytest
import torch
from interp_child import run_interpreter_cases
from reference64 import Reference64
from test_reference_parity import TOL, build, rel_err, tokens_for

from andromeda.errors import ConfigError
from andromeda.model.decode import GraphedDecoder
from andromeda.model.positional import xpos_max_position, xpos_period

LONG = 262_144 + 64
STARTS = (200_000, LONG - 64 - 40)  # the last of 40 tokens at position 262,183


def long_model(backend: str, **extra):
    return build("spec", backend, max_seq_len=LONG, **extra)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_logits_at_200k_and_256k_match_float64_and_depend_only_on_distance(backend):
    m = long_model(backend)
    assert m.cfg.rotary_xpos and m.cfg.n_alibi_heads and STARTS[1] > 9 * xpos_max_position(m.cfg.xpos_scale_base)
    tokens = tokens_for("spec")
    ref = Reference64(m.cfg.to_dict(), m.state_dict())
    with torch.no_grad():
        at0 = m(tokens)
        for start in STARTS:
            out = m(tokens, start=start)
            assert rel_err(out, ref(tokens, start=start)) <= TOL, start
            assert rel_err(out, at0.double()) <= TOL, start  # only i - j counts


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("start", [0, 200_000])
def test_a_sequence_of_several_anchor_blocks_matches_float64(backend, start):
    """Scale base 2: anchor blocks of 64 positions (one reference would reach 3.5^(110/2) ~ 1e30 at 110), so 300
    tokens span 5 or 6 blocks, each block's queries against every earlier key; steep xPos, so a wrong factor
    across blocks is far outside tolerance."""
    m = long_model(backend, xpos_scale_base=2, rotary_dim=16)
    assert xpos_period(2) == 64
    tokens = tokens_for("spec", batch=1, n=300)
    with torch.no_grad():
        out = m(tokens, start=start)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)) <= TOL


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("start", [0, 200_000, 262_000])
@pytest.mark.parametrize("chunks", [(300,), (1, 99, 64, 136)])
def test_cached_and_chunked_prefill_equal_the_forward_at_far_positions(backend, start, chunks):
    """A cache placed at `start` (new_cache(start=)), filled whole or in chunks that cut anchor blocks anywhere,
    gives the forward's logits and float64's; then a decode step through the same cache does too."""
    m = long_model(backend, xpos_scale_base=2, rotary_dim=16)
    tokens = tokens_for("spec", batch=1, n=301)
    ref = Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)
    cache = m.new_cache(1, 301, start=start)
    with torch.no_grad():
        want = m(tokens[:, :300], start=start)
        outs, at = [], 0
        for c in chunks:
            outs.append(m(tokens[:, at : at + c], cache=cache))
            at += c
        got = torch.cat(outs, dim=1)
        step = m(tokens[:, 300:], cache=cache)
    assert rel_err(got, want.double()) <= TOL and rel_err(got, ref[:, :300]) <= TOL
    assert rel_err(step, ref[:, 300:]) <= TOL and cache.position == start + 301


def test_gradients_through_several_chunks_match_float64():
    m = long_model("sdpa", xpos_scale_base=2, rotary_dim=16)
    tokens = tokens_for("spec", batch=1, n=240)
    w = m.blocks[0].attn.to_k.weight
    (m(tokens, start=200_000).double().square().mean()).backward()
    got = w.grad.double()
    ref = Reference64(m.cfg.to_dict(), m.state_dict(), grad=True)
    ref(tokens, start=200_000).square().mean().backward()
    want = ref.w["blocks.0.attn.to_k.weight"].grad
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4


def test_bad_positions_are_one_line_errors():
    m = long_model("sdpa")
    with pytest.raises(ConfigError, match="start"):
        m(tokens_for("spec"), cache=m.new_cache(2, 64), start=5)
    with pytest.raises(ConfigError, match="cache.start"):
        m.new_cache(1, 8, start=-1)


def test_triton_and_fused_decode_at_long_positions_in_interpreter():
    pytest.importorskip("triton")
    run_interpreter_cases("interp_long_positions_cases.py", 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_prefill_and_fused_decode_over_anchor_blocks_match_float64(dtype):
    """On a GPU: the Triton prefill (with the norms' skip bound) and 60 captured fused decode steps over a cache
    of three anchor blocks (scale base 4: 192 positions each; the cache placed at 199,680) against float64."""
    m = long_model("triton", xpos_scale_base=4).to("cuda", dtype)
    tokens = tokens_for("spec", batch=1, n=420).cuda()
    start = 1040 * 192
    ref = Reference64(m.cfg.to_dict(), {k: v.float().cpu() for k, v in m.state_dict().items()})(tokens.cpu(),
                                                                                                  start=start)
    cache = m.new_cache(1, 448, start=start)
    dec = GraphedDecoder(m, cache, kernels="triton")
    assert dec.kernels == "triton" and len(dec.static.blocks) == 3
    with torch.no_grad():
        first = m(tokens[:, :360], cache=cache)
    outs = [dec.step(tokens[:, t : t + 1]) for t in range(360, 420)]
    tol = TOL if dtype == torch.float32 else 3e-2
    assert rel_err(first.float().cpu(), ref[:, :360]) <= tol
    assert rel_err(torch.stack(outs, 1).float().cpu(), ref[:, 360:]) <= tol


def test_anchor_blocks_are_whole_tiles_of_the_kernels_within_the_finite_span():
    """Every period stays within the span whose factors are finite, on the decode kernel's 64-key tiles; from
    1,024 positions on, on the Hopper forward's 128-row tiles too, so that a long prefill's per-block calls
    (queries of one block after whole blocks of keys) are ones it takes (triton_flash._sm90_fits)."""
    from andromeda.model.backends.settings import TritonTuning

    sm90 = TritonTuning().sm90
    for base in (2, 4, 8, 16, 64, 100, 512, 1000, 4096):
        for factor in (1.0, 2.0, 8.0):
            span = xpos_max_position(base, factor)
            period = xpos_period(base, factor)
            assert 0 < period <= span, (base, factor)
            if span >= 64:
                assert period % 64 == 0 and span - period < (128 if span >= 1024 else 64), (base, factor)
            if span >= 1024:
                assert period % sm90["BLOCK_N"] == 0 and period % (2 * sm90["BLOCK_M"]) == 0, (base, factor)
    assert xpos_period(512) == 28_160  # the spec default: 220 tiles of 128
