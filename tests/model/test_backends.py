"""Every attention backend against eager and against a float64 reference written out here."""

import math

import pytest
import torch

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model import backends
from andromeda.model.backends import AttentionSpec
from andromeda.model.backends.eager import attention_probs
from andromeda.model.positional import head_slopes

TOL = {"sdpa": 1e-5, "flex": 1e-5}


def _reference(q, k, v, causal, scale, slopes):
    """Float64, one head at a time, written from the definitions."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    out = torch.zeros(b, h, nq, d, dtype=torch.float64)
    for hh in range(h):
        kv = hh // (h // hkv)
        for i in range(nq):
            pi = nk - nq + i  # absolute position of query i
            s = (q[:, hh, i].double()[:, None, :] * k[:, kv].double()).sum(-1) * scale  # (B, Nk)
            j = torch.arange(nk)
            if slopes is not None:
                dist = (pi - j).double() if causal else (pi - j).abs().double()
                s = s - float(slopes[hh]) * dist
            if causal:
                s = s.masked_fill(j > pi, -math.inf)
            out[:, hh, i] = (s.softmax(-1)[:, :, None] * v[:, kv].double()).sum(1)  # (B, D)
    return out


CASES = [
    # heads, kv_heads, nq, nk, causal, alibi_heads, scale
    (4, 4, 33, 33, True, 0, None),  # MHA
    (4, 1, 33, 33, True, 0, None),  # MQA
    (4, 2, 20, 20, True, 0, None),  # GQA
    (4, 1, 40, 40, True, 2, None),  # ALiBi on some heads
    (4, 1, 40, 40, True, 4, 10.0),  # ALiBi all heads, QK-norm logit scale
    (4, 4, 17, 17, False, 2, None),  # non-causal ALiBi (symmetric distance)
    (4, 1, 1, 37, True, 2, 10.0),  # one decode step over a cache
    (4, 2, 5, 37, True, 2, None),  # several new tokens over a cache (bottom-right causal)
    (2, 1, 150, 150, True, 1, 10.0),  # length not a multiple of the 128 block
]


def _inputs(h, hkv, nq, nk, d=16, unit=False):
    q, k, v = torch.randn(2, h, nq, d), torch.randn(2, hkv, nk, d), torch.randn(2, hkv, nk, d)
    if unit:  # QK-norm-like inputs so a scale of 10 gives realistic logits
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    return q, k, v


@pytest.mark.parametrize("case", CASES)
def test_eager_matches_float64_reference(case):
    h, hkv, nq, nk, causal, na, scale = case
    q, k, v = _inputs(h, hkv, nq, nk, unit=scale is not None)
    scale = scale or 16**-0.5
    slopes = head_slopes(h, na) if na else None
    out = backends.get("eager")(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes)
    assert torch.allclose(out.double(), _reference(q, k, v, causal, scale, slopes), atol=1e-5)


@pytest.mark.parametrize("name", ["sdpa", "flex"])
@pytest.mark.parametrize("case", CASES)
def test_backend_matches_eager_and_float64(name, case, flex_calls):
    """Each backend against eager (the reference backend) and the float64 definition. On CPU, flex runs its
    kernel only for Nq == Nk without gradients (asserted); with fewer queries than keys it hands the call to
    SDPA by design (backends/flex.py), which the sdpa cases test, so those flex cases are skipped."""
    h, hkv, nq, nk, causal, na, scale = case
    if name == "flex" and nq != nk:
        pytest.skip("flex hands Nq < Nk to SDPA on CPU (backends/flex.py); the sdpa case covers it")
    q, k, v = _inputs(h, hkv, nq, nk, unit=scale is not None)
    scale = scale or 16**-0.5
    slopes = head_slopes(h, na) if na else None
    ref = backends.get("eager")(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes)
    out = backends.get(name)(q, k, v, causal=causal, scale=scale, alibi_slopes=slopes)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert (out - ref).abs().max().item() <= TOL[name]
    assert (out.double() - _reference(q, k, v, causal, scale, slopes)).abs().max().item() <= TOL[name]
    assert flex_calls == ([nq] if name == "flex" else [])


def test_flex_with_gradients_is_eager_on_cpu(flex_calls):
    """What the model's training step gets from flex on CPU (no CPU backward in FlexAttention): eager's
    function and gradients, and no flex kernel call. Stated, so no test mistakes it for flex's backward."""
    q, k, v = (t.requires_grad_() for t in _inputs(4, 1, 40, 40))
    slopes = head_slopes(4, 2)
    out = backends.get("flex")(q, k, v, causal=True, scale=0.25, alibi_slopes=slopes)
    ref = backends.get("eager")(q, k, v, causal=True, scale=0.25, alibi_slopes=slopes)
    assert torch.equal(out, ref) and flex_calls == []


def test_probs_are_causal_and_normalized():
    q, k, _ = _inputs(4, 1, 12, 12)
    p = attention_probs(q, k, causal=True, scale=0.25, alibi_slopes=head_slopes(4, 2))
    assert torch.allclose(p.sum(-1), torch.ones(2, 4, 12))
    assert torch.all(p.triu(1) == 0)


@pytest.mark.parametrize("n", [64, 128, 300])
def test_flex_causal_block_mask_structure(n):
    """The block mask built from indices equals create_block_mask's (which evaluates the mask)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from andromeda.model.backends.flex import causal_block_mask

    ours = causal_block_mask(n, "cpu")
    ref = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device="cpu")
    assert torch.equal(ours.to_dense(), ref.to_dense())
    # full blocks are exactly those strictly below the diagonal
    nb = -(-n // 128)
    assert ours.full_kv_num_blocks.flatten().tolist() == list(range(nb))


def test_selection_and_refusals():
    cpu = torch.device("cpu")
    spec = AttentionSpec(heads=4, kv_heads=1, dim_head=16, alibi=True)
    assert backends.select(spec, cpu).name == "sdpa"
    assert backends.preference(spec, torch.device("cuda"))[0] in ("triton", "flex")
    assert backends.select(spec, cpu, "flex").name == "flex"
    with pytest.raises(UnsupportedError, match="unknown"):
        backends.get("nope")
    reasons = backends.reasons(spec, cpu)
    assert all(reasons[n] is None for n in ("eager", "sdpa", "flex"))
    assert reasons["triton"] is None or "CUDA" in reasons["triton"] or "not installed" in reasons["triton"]


def test_model_config_rejects_unknown_backend():
    from andromeda.model import from_name

    with pytest.raises(ConfigError, match="attn_backend"):
        from_name("tiny", attn_backend="cudnn-magic")


def test_flex_cached_mask_from_inference_mode_serves_later_calls(flex_calls):
    """A block mask first built under inference_mode is cached, so its tensors must be ordinary ones: a CUDA
    training step that reuses it would fail on inference tensors. On CPU a training step runs eager (no
    flex backward here), so what is checked is the mask itself and a later no-grad call outside inference
    mode that really runs flex on it."""
    from andromeda.model import Andromeda, from_name
    from andromeda.model.backends.flex import causal_block_mask

    m = Andromeda(from_name("tiny", attn_backend="flex")).eval()
    tokens = torch.randint(0, 320, (1, 77))
    with torch.inference_mode():
        first = m(tokens)
    mask = causal_block_mask(77, "cpu")  # the cached one
    assert not mask.kv_num_blocks.is_inference() and not mask.full_kv_indices.is_inference()
    with torch.no_grad():
        assert torch.equal(m(tokens), first)
    assert flex_calls == [77] * 2 * m.cfg.depth


def test_config_names_every_registered_backend():
    """ModelConfig checks attn_backend against a torch-free list (manifests validate before torch loads):
    it must name exactly the registry's backends."""
    from andromeda.model import backends
    from andromeda.model.config import ATTN_BACKENDS

    assert sorted(ATTN_BACKENDS) == sorted(backends.names())
