"""Positions far past xPos's fixed-centre float32 range (issue: long context), without a KV cache.

A forward applies xPos relative to each chunk of queries (positional.RelativeXPos), so a tiny model with xPos
and ALiBi gives finite logits at positions near 200,000 and 256,000 that equal a float64 reference computing
zeta^((i - j) / base) from each pair's distance (reference64.py), and that depend on positions only through
i - j: the same tokens at offset 0 and at offset 200,000 give the same logits (no earlier context).
"""

from __future__ import annotations

import pytest
import torch
from interp_child import run_interpreter_cases
from reference64 import Reference64
from test_reference_parity import TOL, build, rel_err, tokens_for

from andromeda.errors import ConfigError
from andromeda.model.positional import xpos_chunk, xpos_max_position

LONG = 262_144 + 64
STARTS = (200_000, LONG - 64 - 40)  # the last of 40 tokens at position 262,183


def long_model(backend: str, **extra):
    return build("spec", backend, max_seq_len=LONG, **extra)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_logits_at_200k_and_256k_match_float64_and_depend_only_on_distance(backend):
    m = long_model(backend)
    assert m.cfg.rotary_xpos and m.cfg.n_alibi_heads and STARTS[1] > 9 * m.xpos_max_position()
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
def test_a_sequence_of_several_chunks_matches_float64(backend, start):
    """Scale base 2: a chunk holds 110 queries (3.5^(110/2) ~ 1e30 on masked pairs), so 300 tokens take 3 chunks,
    each against every earlier key; steep xPos, so a wrong factor across chunks is far outside tolerance."""
    m = long_model(backend, xpos_scale_base=2, rotary_dim=16)
    assert xpos_chunk(2) == int(xpos_max_position(2)) == 110
    tokens = tokens_for("spec", batch=1, n=300)
    with torch.no_grad():
        out = m(tokens, start=start)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)) <= TOL


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


def test_cached_positions_past_the_fixed_centre_range_are_refused():
    m = long_model("sdpa")
    last = int(m.xpos_max_position()) + 1
    with pytest.raises(ConfigError, match="without a cache"):
        m.check_positions(last, cached=True)
    m.check_positions(last, cached=False)  # the forward without a cache takes it
    with pytest.raises(ConfigError, match="start"):
        m(tokens_for("spec"), cache=m.new_cache(2, 64), start=5)


def test_triton_at_long_positions_in_interpreter():
    pytest.importorskip("triton")
    run_interpreter_cases("interp_long_positions_cases.py", 3)
