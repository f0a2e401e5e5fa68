"""The static-shape decode step and its CUDA graph: the same logits as the cached and the uncached forward."""

import pytest
import torch

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model import Andromeda, from_name
from andromeda.model.decode import GraphedDecoder, StaticStep

PROMPT, STEPS = 12, 20

CONFIGS = {
    "tiny": {},  # ALiBi on 2 of 4 heads, xPos, token shift, one KV head, QK-norm with dim scale
    "parallel": dict(parallel_block=True),
    "deepnorm": dict(deepnorm=True),
    "shift2": dict(shift_tokens=2, norm="rmsnorm"),
    "alibi_xpos_interp": dict(alibi_num_heads=3, pos_interpolation_factor=2.0, rotary_dim=16),
    "kv2": dict(kv_heads=2, qk_norm=False, qk_norm_dim_scale=False),
    "mha_tied": dict(kv_heads=None, tie_embeddings=True),
    "abs_pos": dict(use_abs_pos_emb=True, alibi_pos_bias=False, alibi_num_heads=None, rotary_xpos=False,
                    shift_tokens=0),
    "rotary_only": dict(alibi_pos_bias=False, alibi_num_heads=None, rotary_xpos=False, rotary_pos_emb=True),
}


def _model(**kw):
    m = Andromeda(from_name("tiny", **kw)).eval()
    with torch.no_grad():  # non-trivial gains and norms, so a feature that is skipped shows in the logits
        for name, p in m.named_parameters():
            if name.endswith("gain") or "norm" in name:
                p.add_(torch.rand_like(p) * 0.5)
    return m


def _close(a, b, tol=2e-5):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def _drive(m, step, prompt, cache, ref_cache):
    """Prefill both caches, then STEPS greedy steps: static step vs model(token, cache=ref_cache)."""
    with torch.no_grad():
        first = m(prompt, cache=ref_cache, logits="last")[:, -1]
        assert torch.equal(m(prompt, cache=cache, logits="last")[:, -1], first)
    tok, tokens, outs = first.argmax(-1, keepdim=True), prompt, []
    for _ in range(STEPS):
        with torch.no_grad():
            ref = m(tok, cache=ref_cache, logits="last")[:, -1]  # (B, V)
        out = step(tok)
        assert _close(out, ref), (out - ref).abs().max().item()
        outs.append(out)
        tokens = torch.cat([tokens, tok], dim=1)
        tok = ref.argmax(-1, keepdim=True)
    return tokens, torch.stack(outs, dim=1)  # (B, N + STEPS), (B, STEPS, V)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_step_matches_cached_and_full_forward(name, attention):
    m = _model(**CONFIGS[name])
    prompt = torch.randint(0, 256, (2, PROMPT))
    cache, ref_cache = m.new_cache(2, PROMPT + STEPS + 3), m.new_cache(2, PROMPT + STEPS + 3)
    dec = GraphedDecoder(m, cache, attention=attention)  # CPU: the same step, run eagerly
    assert dec.graph is None
    tokens, outs = _drive(m, dec.step, prompt, cache, ref_cache)
    with torch.no_grad():
        full = m(tokens)  # (B, N + STEPS, V): no cache at all
    assert _close(outs, full[:, PROMPT:])
    assert cache.length == PROMPT + STEPS and dec.static.pos.tolist() == [PROMPT + STEPS]


def test_decoder_built_before_the_prefill_shares_the_shift_buffers_and_follows_resets():
    m = _model(shift_tokens=2)
    cache, ref_cache = m.new_cache(1, 40), m.new_cache(1, 40)
    dec = GraphedDecoder(m, cache)  # allocates the shift buffers; the prefill must write into them
    bufs = {k: v.data_ptr() for k, v in dec.static.shift.items()}
    assert len(bufs) == 2 * m.cfg.depth
    _drive(m, dec.step, torch.randint(0, 256, (1, 7)), cache, ref_cache)
    assert {k: cache.shift_state(*k).data_ptr() for k in bufs} == bufs
    cache.reset()  # zeroes in place; the next prefill and steps start over at position 0
    ref_cache = m.new_cache(1, 40)
    _drive(m, dec.step, torch.randint(0, 256, (1, 5)), cache, ref_cache)
    assert {k: cache.shift_state(*k).data_ptr() for k in bufs} == bufs
    assert dec.static.pos.tolist() == [5 + STEPS]


def test_decode_step_takes_a_device_position_and_advances_it():
    m = _model()
    prompt = torch.randint(0, 256, (1, 6))
    cache, ref_cache = m.new_cache(1, 16), m.new_cache(1, 16)
    with torch.no_grad():
        m(prompt, cache=cache), m(prompt, cache=ref_cache)
    pos = torch.tensor([6])
    tok = torch.tensor([[3]])
    for i in range(4):
        out = m.decode_step(tok, pos, cache)
        with torch.no_grad():
            ref = m(tok, cache=ref_cache, logits="last")[:, -1]
        assert _close(out, ref)
        assert pos.tolist() == [7 + i] and cache.length == 7 + i


def test_generate_with_cuda_graph_flag_matches_plain_generate():
    m = _model()
    prompt = torch.randint(0, 256, (2, 9))
    tokens, logits = m.generate(prompt, 15, return_logits=True)
    g_tokens, g_logits = m.generate(prompt, 15, return_logits=True, cuda_graph=True)
    assert torch.equal(tokens, g_tokens)
    assert _close(g_logits, logits)
    assert not g_logits.is_inference()  # usable outside inference mode, like generate's other outputs
    with torch.no_grad():
        full = m(tokens)
    assert _close(g_logits, full[:, 8:-1])


def test_greedy_option_returns_the_argmax():
    m = _model()
    cache = m.new_cache(2, 20)
    with torch.no_grad():
        m(torch.randint(0, 256, (2, 4)), cache=cache)
    dec = GraphedDecoder(m, cache, greedy=True)
    logits, nxt = dec.step(torch.tensor([[1], [2]]))
    assert nxt.shape == (2, 1) and torch.equal(nxt[:, 0], logits.argmax(-1))


def test_refusals_are_one_line_errors():
    m = _model()
    with pytest.raises(UnsupportedError, match="quant='int8'") as e:
        GraphedDecoder(m, m.new_cache(1, 8, quant="int8", group_size=16))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cache_quant"):
        m.generate(torch.randint(0, 256, (1, 3)), 4, cache_quant="int4", cuda_graph=True)
    with pytest.raises(ConfigError, match="attention"):
        StaticStep(m, m.new_cache(1, 8), attention="flash")
    with pytest.raises(UnsupportedError, match="CUDA"):
        GraphedDecoder(m, m.new_cache(1, 8), graph=True)
    cache = m.new_cache(1, 5)
    with torch.no_grad():
        m(torch.randint(0, 256, (1, 3)), cache=cache)
    dec = GraphedDecoder(m, cache)
    with pytest.raises(ConfigError, match=r"\(1, 1\)"):
        dec.step(torch.tensor([[1, 2]]))
    dec.step(torch.tensor([[1]]))
    dec.step(torch.tensor([[1]]))
    with pytest.raises(ConfigError, match="position 5 is past the cache's max_len 5") as e:
        dec.step(torch.tensor([[1]]))
    assert "\n" not in str(e.value) and cache.length == 5


@pytest.mark.parametrize("kw,limit,match", [
    (dict(xpos_scale_base=4), 220, "xPos"),  # last finite position 4 * ln(1e30)/ln(3.5) = 220.5
    (dict(use_abs_pos_emb=True, max_seq_len=32), 31, "max_seq_len 32"),
])
def test_positions_the_config_cannot_represent_are_refused(kw, limit, match):
    m = _model(**kw)
    cache = m.new_cache(1, 240)
    with torch.no_grad():
        m(torch.randint(0, 256, (1, limit - 2)), cache=cache)
    dec = GraphedDecoder(m, cache)
    for _ in range(3):  # positions limit - 2 .. limit
        assert torch.isfinite(dec.step(torch.tensor([[1]]))).all()
    with pytest.raises(ConfigError, match=match):
        dec.step(torch.tensor([[1]]))
    assert cache.length == limit + 1


# ---- GPU: the captured graph ----------------------------------------------------------------------
def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.cuda
@pytest.mark.parametrize("preset,kw", [("tiny", dict(dim=128, dim_head=32)), ("small", dict(depth=2))])
@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
@pytest.mark.parametrize("before_prefill", [False, True])
def test_cuda_graph_replay_matches_eager_cached_steps(preset, kw, attention, before_prefill):
    torch.backends.cuda.matmul.allow_tf32 = False
    m32 = Andromeda(from_name(preset, **kw)).cuda().eval()  # float32: the truth both bf16 paths are held to
    m = Andromeda(from_name(preset, **kw)).to("cuda", torch.bfloat16).eval()
    m.load_state_dict(m32.state_dict())
    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, 256, (1, 40), device="cuda", generator=g)
    cache, ref_cache, cache32 = m.new_cache(1, 64), m.new_cache(1, 64), m32.new_cache(1, 64)
    dec = GraphedDecoder(m, cache, attention=attention) if before_prefill else None
    with torch.no_grad():
        first = m(prompt, cache=ref_cache, logits="last")[:, -1]
        m(prompt, cache=cache, logits="last")
        m32(prompt, cache=cache32)
    dec = dec or GraphedDecoder(m, cache, attention=attention, greedy=True)
    assert dec.graph is not None
    tok = first.argmax(-1, keepdim=True)
    for _ in range(16):
        with torch.no_grad():
            ref = m(tok, cache=ref_cache, logits="last")[:, -1]
            truth = m32(tok, cache=cache32, logits="last")[:, -1]
        out = dec.step(tok)
        if dec.greedy:
            out, nxt = out
            assert torch.equal(nxt[:, 0], out.argmax(-1))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert _rel(out, ref) < 3e-2
        assert _rel(out, truth) < 1.5 * _rel(ref, truth) + 2e-3  # no less accurate than the eager bf16 path
        tok = ref.argmax(-1, keepdim=True)
    assert cache.length == ref_cache.length == 56 and dec.static.pos.item() == 56
    # the graph wrote the keys the eager path did, and warm-up/capture left no trace past position 56
    assert _rel(cache.k[:, :, :, :56], ref_cache.k[:, :, :, :56]) < 3e-2
    assert not cache.k[:, :, :, 56:].any()


@pytest.mark.cuda
def test_cuda_graph_generate_matches_eager_generate():
    m = Andromeda(from_name("tiny", dim=128, dim_head=32)).cuda().eval()
    prompt = torch.randint(0, 256, (2, 30), device="cuda")
    tokens, logits = m.generate(prompt, 16, return_logits=True)
    g_tokens, g_logits = m.generate(prompt, 16, return_logits=True, cuda_graph=True)
    assert (g_logits - logits).abs().max().item() < 1e-3
    assert torch.equal(tokens, g_tokens)


@pytest.mark.cuda
def test_compiled_cuda_graph_matches_eager_cached_steps():
    m = Andromeda(from_name("tiny", dim=128, dim_head=32)).to("cuda", torch.bfloat16).eval()
    prompt = torch.randint(0, 256, (1, 20), device="cuda")
    cache, ref_cache = m.new_cache(1, 48), m.new_cache(1, 48)
    with torch.no_grad():
        tok = m(prompt, cache=ref_cache, logits="last")[:, -1].argmax(-1, keepdim=True)
        m(prompt, cache=cache)
    dec = GraphedDecoder(m, cache, compile=True)
    for _ in range(8):
        with torch.no_grad():
            ref = m(tok, cache=ref_cache, logits="last")[:, -1]
        assert _rel(dec.step(tok), ref) < 3e-2
        tok = ref.argmax(-1, keepdim=True)
