"""Attention probabilities recomputed in chunks against the eager backend; entropy of known
distributions; gradients through the attention against autograd on the materialized attention."""

import math

import pytest
import torch

from andromeda.diagnostics import Diagnostics
from andromeda.diagnostics.attention import (
    AttentionInputs,
    attention_grads,
    attention_stats,
    normalized_entropy,
    recompute_probs,
)
from andromeda.model import Andromeda, from_name
from andromeda.model.backends.eager import attention_probs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_entropy_of_known_distributions():
    n = 6
    uniform = torch.tril(torch.ones(n, n, dtype=torch.float64))
    uniform = uniform / uniform.sum(-1, keepdim=True)  # row i uniform over keys 0..i
    ctx = torch.arange(1, n + 1)
    hn = normalized_entropy(uniform, ctx)
    assert math.isnan(hn[0])  # query 0: one key, undefined
    assert torch.allclose(hn[1:], torch.ones(n - 1, dtype=torch.float64))
    onehot = torch.zeros(n, n, dtype=torch.float64)
    onehot[torch.arange(n), torch.arange(n)] = 1.0
    assert torch.all(normalized_entropy(onehot, ctx)[1:] == 0)


def test_uniform_attention_stats_match_formulas():
    # q = 0: every allowed key gets the same weight 1/(i+1) under causal attention
    b, h, n, d = 2, 3, 9, 4
    q = torch.zeros(b, h, n, d)
    k = torch.randn(b, 1, n, d)
    s = attention_stats(AttentionInputs(q, k, None, 0.5, True), chunk=4).summary(0.5, 0.5)
    rows = range(1, n)  # query 0 excluded
    assert s["rows"] == [b * (n - 1)] * h
    assert s["entropy_norm_mean"] == pytest.approx([1.0] * h, abs=1e-6)
    assert s["entropy_norm_std"] == pytest.approx([0.0] * h, abs=1e-3)
    assert s["entropy_nats"] == pytest.approx([sum(math.log(i + 1) for i in rows) / (n - 1)] * h, rel=1e-6)
    assert s["max_weight_mean"] == pytest.approx([sum(1 / (i + 1) for i in rows) / (n - 1)] * h, rel=1e-6)
    assert s["span_tokens"] == pytest.approx([sum(i / 2 for i in rows) / (n - 1)] * h, rel=1e-6)
    assert s["heads_attending"] == 0
    assert sum(s["hist"][0]) == b * n * (n + 1) / 2  # every allowed pair counted once


def _qk_of_layer(model, tokens, layer):
    """q, k, v of a layer, from a hook of the test's own on the attention input."""
    got = {}

    def pre(mod, args):
        got["q"], got["k"], got["v"] = mod.project_qk(args[0], args[1])
        got["slopes"] = args[2]

    h = model.blocks[layer].attn.register_forward_pre_hook(pre)
    with torch.no_grad():
        model(tokens)
    h.remove()
    return got


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": False, "qk_norm_dim_scale": False, "kv_heads": 2}])
def test_recomputed_probs_equal_eager_probs(overrides):
    model = Andromeda(from_name("tiny", attn_backend="sdpa", **overrides)).eval()
    tokens = torch.randint(0, 256, (2, 50))
    cfg = model.cfg
    for layer in range(cfg.depth):
        g = _qk_of_layer(model, tokens, layer)
        ref = attention_probs(g["q"], g["k"], causal=True, scale=cfg.attn_scale, alibi_slopes=g["slopes"])
        inp = AttentionInputs(g["q"], g["k"], g["v"], cfg.attn_scale, True, g["slopes"])
        ours = recompute_probs(inp, chunk=7)
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
        sel = recompute_probs(inp, heads=[3, 1], chunk=11)
        assert torch.allclose(sel, ref[:, [3, 1]], atol=1e-6, rtol=1e-5)


def test_captured_stats_equal_stats_of_eager_probs():
    model = Andromeda(from_name("tiny", attn_backend="sdpa")).eval()
    tokens = torch.randint(0, 256, (2, 40))
    diag = Diagnostics(model, activations=False, activation_grads=False, param_grads=False,
                       attention_grads=False, heatmap_len=16, attn_chunk_elems=500)
    with torch.no_grad(), diag.capture():
        model(tokens)
    rep = diag.report()
    cfg = model.cfg
    for layer in range(cfg.depth):
        g = _qk_of_layer(model, tokens, layer)
        p = attention_probs(g["q"], g["k"], causal=True, scale=cfg.attn_scale, alibi_slopes=g["slopes"]).double()
        s = rep.attention[layer]["stats"]
        n = p.shape[-1]
        ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)[:, :, 1:]  # (B, H, N-1)
        hn = ent / torch.log(torch.arange(2, n + 1, dtype=torch.float64))
        assert s["entropy_norm_mean"] == pytest.approx(hn.mean(dim=(0, 2)).tolist(), rel=1e-5)
        assert s["entropy_norm_std"] == pytest.approx(hn.std(dim=(0, 2), correction=0).tolist(), rel=1e-3, abs=1e-6)
        assert s["max_weight_mean"] == pytest.approx(p.amax(-1)[:, :, 1:].mean(dim=(0, 2)).tolist(), rel=1e-5)
        dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().double()
        span = (p * dist).sum(-1)[:, :, 1:].mean(dim=(0, 2))
        assert s["span_tokens"] == pytest.approx(span.tolist(), rel=1e-5)
        assert torch.allclose(torch.tensor(s["heatmap"]), p[0, :, :16, :16].float(), atol=1e-6)
        pairs = zip(s["entropy_norm_mean"], s["max_weight_mean"], strict=True)
        concentrated = [(e < 0.5) or (m > 0.5) for e, m in pairs]
        assert s["heads_attending"] == sum(concentrated)


def _reference_grads(q, k, v, d_out, scale, slopes, mask=None, causal=True):
    """Autograd through the full, materialized attention (float64)."""
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = (q @ ke.transpose(-1, -2)) * scale
    n = q.shape[2]
    rel = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    if slopes is not None:
        s = s - slopes.double()[None, :, None, None] * rel.double()
    s.retain_grad()
    keep = (rel >= 0) if causal else torch.ones(n, n, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask
    o = s.masked_fill(~keep, float("-inf")).softmax(-1) @ ve
    (o * d_out.double()).sum().backward()
    return q.grad, k.grad, v.grad, s.grad.masked_select(keep.expand_as(s.grad))


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_gradients_equal_autograd_on_materialized_attention(with_mask):
    torch.manual_seed(3)
    b, h, hkv, n, d = 2, 4, 2, 13, 8
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)
    d_out = torch.randn(b, h, n, d)
    slopes = torch.tensor([0.5, 0.25, 0.0, 0.0])
    mask = (torch.rand(n, n) > 0.3) | torch.eye(n, dtype=torch.bool) if with_mask else None
    inp = AttentionInputs(q, k, v, 0.3, True, slopes, None if mask is None else mask[None, None])
    acc = attention_grads(inp, d_out, chunk=4)
    dq, dk, dv, ds = _reference_grads(q, k, v, d_out, 0.3, slopes, mask)
    s = acc.summary()
    for name, ref in (("q", dq), ("k", dk), ("v", dv), ("scores", ds)):
        assert s[name]["l2_norm"] == pytest.approx(float(ref.norm()), rel=1e-5), name
        assert s[name]["mean"] == pytest.approx(float(ref.mean()), rel=1e-4, abs=1e-7), name
        assert s[name]["abs_max"] == pytest.approx(float(ref.abs().max()), rel=1e-5), name
        assert s[name]["count"] == ref.numel()
    assert s["q"]["norm_per_head"] == pytest.approx(dq.pow(2).sum(dim=(0, 2, 3)).sqrt().tolist(), rel=1e-5)


def test_captured_attention_gradients_equal_autograd_of_the_model():
    """dL/dq, dL/dk (hooked on the model's rotated q and k: Attention._rotate) and dL/dv (Attention._project)
    of the real model equal the chunked recomputation's."""
    model = Andromeda(from_name("tiny", attn_backend="sdpa")).eval()
    tokens = torch.randint(0, 256, (1, 30))
    true = {}

    def keep(i, name, t):
        if t.requires_grad:
            t.register_hook(lambda g: true.__setitem__((i, name), g.detach().clone()))

    for i, blk in enumerate(model.blocks):
        project, rotate = blk.attn._project, blk.attn._rotate

        def projected(x, _i=i, _orig=project):
            q, k, v = _orig(x)
            keep(_i, "v", v)
            return q, k, v

        def rotated(q, k, rope, _i=i, _orig=rotate):
            q, k = _orig(q, k, rope)
            keep(_i, "q", q)
            keep(_i, "k", k)
            return q, k

        blk.attn._project, blk.attn._rotate = projected, rotated
    diag = Diagnostics(model, activations=False, activation_grads=False, param_grads=False, attention=False)
    with diag.capture():
        model.loss(tokens).backward()
    rep = diag.report()
    for i in range(model.cfg.depth):
        for name in ("q", "k", "v"):
            assert rep.attention[i]["grads"][name]["l2_norm"] == pytest.approx(float(true[(i, name)].norm()),
                                                                                rel=1e-4), (i, name)


def _hf_llama(impl):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(
        "llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=300, max_position_embeddings=256)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # sharper than the near-uniform attention of a fresh init
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    return model


def test_hf_capture_equals_hf_eager_attention_weights():
    model = _hf_llama("eager")
    tokens = torch.randint(0, 256, (1, 24))
    diag = Diagnostics(model, heatmap_len=24, activations=False, activation_grads=False, param_grads=False,
                       attention_grads=False)
    with torch.no_grad(), diag.capture():
        out = model(input_ids=tokens, output_attentions=True)
    rep = diag.report()
    assert model.config._attn_implementation == "eager" and not rep.attention_unavailable
    for i in range(2):
        assert torch.allclose(torch.tensor(rep.attention[i]["stats"]["heatmap"]), out.attentions[i][0], atol=1e-6)


def test_hf_attention_gradient_orientation(monkeypatch):
    """dL/dv from the captured output gradient reproduces v_proj's weight gradient exactly."""
    from andromeda.diagnostics import capture

    model = _hf_llama("sdpa")
    seen = []
    real = capture.attention_grads
    monkeypatch.setattr(capture, "attention_grads", lambda inp, d_out, **kw: seen.append((inp, d_out))
                        or real(inp, d_out, **kw))
    x_in = {}
    v_proj = model.model.layers[1].self_attn.v_proj
    v_proj.register_forward_pre_hook(lambda m, a: x_in.__setitem__("x", a[0].detach()))
    diag = Diagnostics(model, attn_layers=(1,), activations=False, activation_grads=False, param_grads=False)
    tokens = torch.randint(0, 256, (2, 20))
    with diag.capture():
        model(input_ids=tokens, labels=tokens).loss.backward()
    (inp, d_out), = seen
    p = recompute_probs(inp)  # (B, H, N, N)
    dv_heads = p.transpose(-1, -2) @ d_out.float()  # (B, H, N, D)
    b, h, n, d = dv_heads.shape
    dv = dv_heads.view(b, 2, h // 2, n, d).sum(2)  # heads of a group share a kv head
    dw = dv.transpose(1, 2).reshape(b * n, -1).T @ x_in["x"].reshape(b * n, -1)
    assert torch.allclose(dw, v_proj.weight.grad, atol=1e-6, rtol=1e-4)
