"""The static-shape decode step and its CUDA graph against the float64 reference (reference64.py)."""

import pytest
import torch
from reference64 import Reference64, randomize

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
    """Weights that make every feature count (reference64.randomize)."""
    return randomize(Andromeda(from_name("tiny", **kw)), seed=len(kw)).eval()


def _truth(m, tokens):
    """Float64 logits (B, N, V) of one full pass, written from the formulas."""
    return Reference64(m.cfg.to_dict(), m.state_dict())(tokens)


def _close(a, b, tol=1e-5):
    """Within tol of the largest reference logit (float32 against float64)."""
    a, b = a.detach().double().cpu(), b.double().cpu()
    return (a - b).abs().max().item() <= tol * b.abs().max().item()


def _drive(m, step, tokens, cache):
    """Prefill tokens[:, :PROMPT] into the cache, then feed the rest one at a time through `step`: each step's
    logits against the float64 reference at its position."""
    want = _truth(m, tokens)
    with torch.no_grad():
        first = m(tokens[:, :PROMPT], cache=cache, logits="last")[:, -1]
    assert _close(first, want[:, PROMPT - 1])
    outs = []
    for t in range(PROMPT, tokens.shape[1]):
        out = step(tokens[:, t : t + 1])  # (B, V)
        assert _close(out, want[:, t]), (t, (out.double() - want[:, t]).abs().max().item())
        outs.append(out)
    return torch.stack(outs, dim=1)  # (B, steps, V)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_step_matches_float64_reference(name, attention):
    m = _model(**CONFIGS[name])
    tokens = torch.randint(0, 256, (2, PROMPT + STEPS))
    cache = m.new_cache(2, PROMPT + STEPS + 3)
    dec = GraphedDecoder(m, cache, attention=attention)  # CPU: the same step, run eagerly
    assert dec.graph is None
    _drive(m, dec.step, tokens, cache)
    assert cache.length == PROMPT + STEPS and dec.static.pos.tolist() == [PROMPT + STEPS]


def test_decoder_built_before_the_prefill_shares_the_shift_buffers_and_follows_resets():
    m = _model(shift_tokens=2)
    cache = m.new_cache(1, 40)
    dec = GraphedDecoder(m, cache)  # allocates the shift buffers; the prefill must write into them
    bufs = {k: v.data_ptr() for k, v in dec.static.shift.items()}
    assert len(bufs) == 2 * m.cfg.depth
    _drive(m, dec.step, torch.randint(0, 256, (1, PROMPT + STEPS)), cache)
    assert {k: cache.shift_state(*k).data_ptr() for k in bufs} == bufs
    cache.reset()  # zeroes in place; the next prefill and steps start over at position 0
    _drive(m, dec.step, torch.randint(0, 256, (1, PROMPT + 5)), cache)
    assert {k: cache.shift_state(*k).data_ptr() for k in bufs} == bufs
    assert dec.static.pos.tolist() == [PROMPT + 5]


def test_decode_step_takes_a_device_position_and_advances_it():
    m = _model()
    tokens = torch.randint(0, 256, (1, 10))
    want = _truth(m, tokens)
    cache = m.new_cache(1, 16)
    with torch.no_grad():
        m(tokens[:, :6], cache=cache)
    pos = torch.tensor([6])
    for i in range(4):
        out = m.decode_step(tokens[:, 6 + i : 7 + i], pos, cache)
        assert _close(out, want[:, 6 + i])
        assert pos.tolist() == [7 + i] and cache.length == 7 + i


def test_generate_with_cuda_graph_flag_matches_plain_generate():
    m = _model()
    prompt = torch.randint(0, 256, (2, 9))
    tokens, logits = m.generate(prompt, 15, return_logits=True)
    g_tokens, g_logits = m.generate(prompt, 15, return_logits=True, cuda_graph=True)
    assert torch.equal(tokens, g_tokens)
    assert _close(g_logits, logits)
    assert not g_logits.is_inference()  # usable outside inference mode, like generate's other outputs
    assert _close(g_logits, _truth(m, tokens)[:, 8:-1])


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


def test_absolute_positions_past_max_seq_len_are_refused():
    m = _model(use_abs_pos_emb=True, max_seq_len=32)
    cache = m.new_cache(1, 40)
    with torch.no_grad():
        m(torch.randint(0, 256, (1, 29)), cache=cache)
    dec = GraphedDecoder(m, cache)
    for _ in range(3):  # positions 29 .. 31
        assert torch.isfinite(dec.step(torch.tensor([[1]]))).all()
    with pytest.raises(ConfigError, match="max_seq_len 32"):
        dec.step(torch.tensor([[1]]))
    assert cache.length == 32


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
@pytest.mark.parametrize("start", [0, 1040 * 192])
def test_static_step_over_several_xpos_anchor_blocks_matches_float64(attention, start):
    """Scale base 4: anchor blocks of 192 positions (positional.XPos), where one fixed reference would reach
    3.5^(220/4) ~ 1e30. A prefill of 150 and 100 steps cross a block edge (at position 192, or 199,872 with the
    cache placed at 199,680: new_cache(start=)); every step matches float64 computing zeta^((i - j)/4)."""
    m = _model(xpos_scale_base=4, max_seq_len=262_144)
    n = 250
    tokens = torch.randint(0, 256, (1, n))
    cache = m.new_cache(1, n, start=start)
    dec = GraphedDecoder(m, cache, attention=attention)
    assert len(dec.static.blocks) == 2
    want = Reference64(m.cfg.to_dict(), m.state_dict())(tokens, start=start)
    with torch.no_grad():
        first = m(tokens[:, :150], cache=cache)
    assert _close(first, want[:, :150])
    for t in range(150, n):
        out = dec.step(tokens[:, t : t + 1])
        assert _close(out, want[:, t]), t
    assert cache.position == start + n


# ---- GPU: the captured graph ----------------------------------------------------------------------
def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.cuda
@pytest.mark.parametrize("preset,kw", [("tiny", dict(dim=128, dim_head=32)), ("small", dict(depth=2))])
@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
@pytest.mark.parametrize("before_prefill", [False, True])
def test_cuda_graph_replay_matches_eager_cached_steps(preset, kw, attention, before_prefill):
    """bf16 graph replay against eager cached steps (same dtype), and no less accurate than they are against the
    float64 reference of the same bf16 weights."""
    torch.backends.cuda.matmul.allow_tf32 = False
    m = Andromeda(from_name(preset, **kw)).to("cuda", torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, 256, (1, 40), device="cuda", generator=g)
    cache, ref_cache = m.new_cache(1, 64), m.new_cache(1, 64)
    dec = GraphedDecoder(m, cache, attention=attention) if before_prefill else None
    with torch.no_grad():
        first = m(prompt, cache=ref_cache, logits="last")[:, -1]
        m(prompt, cache=cache, logits="last")
    dec = dec or GraphedDecoder(m, cache, attention=attention, greedy=True)
    assert dec.graph is not None
    tok, tokens, outs, refs = first.argmax(-1, keepdim=True), prompt, [], []
    for _ in range(16):
        with torch.no_grad():
            ref = m(tok, cache=ref_cache, logits="last")[:, -1]
        out = dec.step(tok)
        if dec.greedy:
            out, nxt = out
            assert torch.equal(nxt[:, 0], out.argmax(-1))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert _rel(out, ref) < 3e-2
        outs.append(out)
        refs.append(ref)
        tokens = torch.cat([tokens, tok], dim=1)
        tok = ref.argmax(-1, keepdim=True)
    truth = _truth(m, tokens)[:, 40:]  # (1, 16, V): positions 40..55
    for s, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        assert _rel(out, truth[:, s]) < 1.5 * _rel(ref, truth[:, s]) + 2e-3  # no less accurate than eager bf16
    assert cache.length == ref_cache.length == 56 and dec.static.pos.item() == 56
    # the graph wrote the keys the eager path did, and warm-up/capture left no trace past position 56
    assert _rel(cache.k[:, :, :, :56], ref_cache.k[:, :, :, :56]) < 3e-2
    assert not cache.k[:, :, :, 56:].any()


@pytest.mark.cuda
def test_cuda_graph_generate_matches_eager_generate():
    torch.backends.cuda.matmul.allow_tf32 = False
    m = Andromeda(from_name("tiny", dim=128, dim_head=32)).cuda().eval()
    prompt = torch.randint(0, 256, (2, 30), device="cuda")
    tokens, logits = m.generate(prompt, 16, return_logits=True)
    g_tokens, g_logits = m.generate(prompt, 16, return_logits=True, cuda_graph=True)
    assert (g_logits - logits).abs().max().item() < 1e-3
    assert torch.equal(tokens, g_tokens)
    assert _close(g_logits, _truth(m, tokens)[:, 29:-1])  # float32: both against the float64 reference


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
