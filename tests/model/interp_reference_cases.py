"""Run by tests/model/test_reference_parity.py in a child pytest with TRITON_INTERPRET=1 (not collected directly):
the Triton attention backend and the fused decode step against the float64 reference."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from reference64 import Reference64  # noqa: E402  (same directory: on sys.path)
from test_reference_parity import (  # noqa: E402
    INTERP,
    PREFIX,
    SMOOTH,
    TOL,
    N,
    build,
    chunked_logits,
    reference,
    rel_err,
    tokens_for,
)

from andromeda.model.decode import GraphedDecoder  # noqa: E402


@pytest.mark.parametrize("name", INTERP["full"])
def test_triton_full_forward(name):
    m = build(name, "triton")
    tokens = tokens_for(name)
    with torch.no_grad():
        out = m(tokens)
    assert m.blocks[0].attn.backend(tokens.device, torch.float32).name == "triton"
    assert rel_err(out, reference(m, tokens)) <= TOL


@pytest.mark.parametrize("name", INTERP["chunked"])
def test_triton_chunked_prefill(name):
    m = build(name, "triton")
    tokens = tokens_for(name)
    assert rel_err(chunked_logits(m, tokens), reference(m, tokens)) <= TOL


@pytest.mark.parametrize("name", INTERP["grads"])
def test_triton_gradients(name):
    m = build(name, "triton", **SMOOTH.get(name, {})).train()
    tokens = tokens_for(name, n=24)
    m.loss(tokens).backward()
    ref = Reference64(m.cfg.to_dict(), m.state_dict(), grad=True)
    logits = ref(tokens)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for key, p in m.named_parameters():
        want = ref.w[key].grad
        assert ((p.grad.double() - want).norm() / want.norm()).item() <= 1e-4, key


@pytest.mark.parametrize("name", INTERP["fused"])
def test_fused_decode_step(name):
    """The fused Triton decode step (batch 1), teacher-forced through positions 13..17 after a prefill (the
    interpreter's 16-key attention blocks split there; ~1 s a step interpreted, so five steps)."""
    m = build(name)
    steps = 5
    tokens = tokens_for(name, batch=1)[:, : PREFIX + steps]
    cache = m.new_cache(1, N)
    with torch.no_grad():
        first = m(tokens[:, :PREFIX], cache=cache, logits="last")[:, -1]
    dec = GraphedDecoder(m, cache, kernels="triton")
    assert dec.kernels == "triton"
    out = [first] + [dec.step(tokens[:, t : t + 1]) for t in range(PREFIX, PREFIX + steps)]
    assert rel_err(torch.stack(out, dim=1), reference(m, tokens)[:, PREFIX - 1 :]) <= TOL  # positions 12..17
