"""Run by tests/model/test_long_positions.py in a child pytest with TRITON_INTERPRET=1 (not collected directly):
the triton backend at positions near 200,000, and over several xPos chunks, against the float64 reference."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from reference64 import Reference64  # noqa: E402
from test_long_positions import long_model  # noqa: E402
from test_reference_parity import TOL, rel_err, tokens_for  # noqa: E402


@pytest.mark.parametrize("start", [200_000, 262_000])
def test_triton_far_positions(start):
    m = long_model("triton")
    tokens = tokens_for("spec", n=40)
    with torch.no_grad():
        out = m(tokens, start=start)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)) <= TOL


def test_triton_several_chunks():
    m = long_model("triton", xpos_scale_base=2, rotary_dim=16)
    tokens = tokens_for("spec", batch=1, n=300)
    with torch.no_grad():
        out = m(tokens, start=100_000)
    assert rel_err(out, Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=100_000)) <= TOL
