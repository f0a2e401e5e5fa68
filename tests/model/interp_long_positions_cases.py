"""Run by tests/model/test_long_positions.py in a child pytest with TRITON_INTERPRET=1 (not collected directly):
the triton backend at positions near 200,000 and over several xPos anchor blocks, and the fused decode step
over a cache of several anchor blocks placed near 200,000, against the float64 reference."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from reference64 import Reference64  # noqa: E402
from test_long_positions import long_model  # noqa: E402
from test_reference_parity import TOL, rel_err, tokens_for  # noqa: E402

from andromeda.model.decode import GraphedDecoder  # noqa: E402


@pytest.mark.parametrize("start", [200_000, 262_000])
def test_triton_far_positions(start):
    m = long_model("triton")
    tokens = tokens_for("spec", n=40)
    with torch.no_grad():
        out = m(tokens, start=start)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)) <= TOL


def test_triton_several_anchor_blocks():
    m = long_model("triton", xpos_scale_base=2, rotary_dim=16)
    tokens = tokens_for("spec", batch=1, n=300)
    with torch.no_grad():
        out = m(tokens, start=100_000)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=100_000)) <= TOL


def test_fused_decode_over_several_anchor_blocks():
    """Scale base 4: blocks of 192 positions; the cache placed at 199,680 (two blocks); 8 fused steps after a
    prefill of 188 cross the block edge."""
    start = 1040 * 192
    m = long_model("eager", xpos_scale_base=4, rotary_dim=16)
    tokens = tokens_for("spec", batch=1, n=196)
    cache = m.new_cache(1, 208, start=start)
    dec = GraphedDecoder(m, cache, kernels="triton")
    assert dec.static.period == 192 and len(dec.static.blocks) == 2
    ref = Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)
    with torch.no_grad():
        m(tokens[:, :188], cache=cache)
    outs = [dec.step(tokens[:, t : t + 1]) for t in range(188, 196)]
    assert rel_err(torch.stack(outs, dim=1), ref[:, 188:]) <= TOL
