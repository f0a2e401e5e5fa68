"""The fused Triton decode step (model/fused_decode.py) against the float64 reference and the torch step.

Triton decides at import whether @triton.jit interprets, so the CPU cases run in a child pytest started
with TRITON_INTERPRET=1 (tests/model/interp_fused_decode_cases.py); on CUDA they run in bf16 as well.
"""


import pytest
import torch
from interp_child import run_interpreter_cases
from reference64 import Reference64

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model import Andromeda, from_name
from andromeda.model.decode import GraphedDecoder, StaticStep

pytest.importorskip("triton")

PROMPT, STEPS = 13, 7  # positions 13..19 cross the interpreter's 16-key attention split

INTERP_CONFIGS = {
    "tiny": {},  # ALiBi on 2 of 4 heads, xPos, token shift, one KV head, QK-norm with dim scale
    "shift2_rms_glu_silu": dict(shift_tokens=2, norm="rmsnorm", ff_glu=True, ff_activation="silu"),
    "kv2_no_qknorm_relu": dict(kv_heads=2, qk_norm=False, qk_norm_dim_scale=False, ff_activation="relu"),
    "mha_partial_rotary": dict(kv_heads=None, alibi_num_heads=3, rotary_xpos=False, rotary_pos_emb=True,
                               rotary_dim=8, pos_interpolation_factor=2.0, qk_norm_dim_scale=False),
    "abs_pos_no_shift": dict(use_abs_pos_emb=True, alibi_pos_bias=False, alibi_num_heads=None,
                             rotary_xpos=False, shift_tokens=0, attn_bias=True),
}


def tiny_model(**kw):
    m = Andromeda(from_name("tiny", **kw)).eval()
    with torch.no_grad():  # non-trivial gains, norms and biases, so a feature that is skipped shows
        for name, p in m.named_parameters():
            if name.endswith("gain") or "norm" in name:
                p.add_(torch.rand_like(p) * 0.5)
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


def drive(m, device, tol, dtype=torch.float32, max_len=32):
    """Prefill two caches, then greedy steps: the fused step and the torch step (same dtype) against the float64
    reference (reference64.py) of the same weights: the fused step within `tol` of the largest logit or no
    worse than 1.5x the torch step; its cache writes and token-shift state as the torch step's."""
    m = m.to(device, dtype)
    prompt = torch.randint(0, 256, (1, PROMPT), device=device)
    fused_cache, torch_cache = m.new_cache(1, max_len), m.new_cache(1, max_len)
    fused = GraphedDecoder(m, fused_cache, kernels="triton", greedy=True)  # the argmax inside the LM head
    plain = GraphedDecoder(m, torch_cache, kernels="torch")
    assert fused.kernels == "triton" and plain.kernels == "torch"
    with torch.no_grad():
        m(prompt, cache=fused_cache)
        tok = m(prompt, cache=torch_cache, logits="last")[:, -1].argmax(-1, keepdim=True)
    tokens, got, base = prompt, [], []
    for _ in range(STEPS):
        out, nxt = fused.step(tok)
        assert torch.equal(nxt, out.argmax(-1, keepdim=True))
        got.append(out.double().cpu())
        base.append(plain.step(tok).double().cpu())
        tokens = torch.cat([tokens, tok], dim=1)
        tok = base[-1].argmax(-1, keepdim=True).to(device)
    want = Reference64(m.cfg.to_dict(), m.state_dict())(tokens)[:, PROMPT:]  # (1, STEPS, V) float64
    for s in range(STEPS):
        scale = want[:, s].abs().max().item()
        err, base_err = ((x[s] - want[:, s]).abs().max().item() / scale for x in (got, base))
        assert err <= max(tol, 1.5 * base_err), (s, err, base_err)  # no worse than the torch step in this dtype
    n = PROMPT + STEPS
    assert fused.static.pos.tolist() == [n] and fused_cache.length == n
    for a, b in ((fused_cache.k, torch_cache.k), (fused_cache.v, torch_cache.v)):  # the cache writes too
        assert ((a[:, :, :, :n] - b[:, :, :, :n]).float().abs().max() <= 2 * tol * b.float().abs().max())
    for key, buf in fused.static.shift.items():  # and the token-shift state
        other = plain.static.shift[key].float()
        assert (buf.float() - other).abs().max() <= 2 * tol * max(1.0, other.abs().max().item()), key


def test_fused_step_matches_in_interpreter():
    run_interpreter_cases("interp_fused_decode_cases.py", len(INTERP_CONFIGS) + 9)


def test_auto_picks_the_torch_step_where_the_fused_one_cannot_run(monkeypatch):
    from andromeda.model import fused_decode

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = tiny_model()
    dec = GraphedDecoder(m, m.new_cache(1, 8))  # CPU: auto -> torch
    assert dec.kernels == "torch" and "CUDA" in dec.kernels_reason
    with pytest.raises(UnsupportedError, match="CUDA GPUs"):
        GraphedDecoder(m, m.new_cache(1, 8), kernels="triton")
    with pytest.raises(ConfigError, match="compile=False"):
        GraphedDecoder(m, m.new_cache(1, 8), kernels="triton", compile=True)
    with pytest.raises(ConfigError, match="decode.kernels: 'cuda' is unknown"):
        GraphedDecoder(m, m.new_cache(1, 8), kernels="cuda")
    # what the fused step refuses, with the reason it gives
    monkeypatch.setattr(fused_decode, "_interpreting", lambda: True)
    assert fused_decode.unsupported(m, m.new_cache(1, 8)) is None
    assert "batch 2" in fused_decode.unsupported(m, m.new_cache(2, 8))
    assert "quantized" in fused_decode.unsupported(m, m.new_cache(1, 8, quant="int8", group_size=16))
    assert "dtype" in fused_decode.unsupported(m, m.new_cache(1, 8, dtype=torch.float16))
    deep = tiny_model(deepnorm=True)
    assert "DeepNorm" in fused_decode.unsupported(deep, deep.new_cache(1, 8))
    with pytest.raises(UnsupportedError, match="training mode"):
        fused_decode.FusedStep(StaticStep(m.train(), m.new_cache(1, 8)))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("name", list(INTERP_CONFIGS))
def test_fused_step_matches_on_cuda(name, dtype, tol):
    torch.manual_seed(0)
    drive(tiny_model(**INTERP_CONFIGS[name]), "cuda", tol, dtype)


@pytest.mark.cuda
def test_fused_graph_matches_at_andromeda_head_shapes():
    """24 heads of 128 on one KV head (the preset's attention), 1 layer, a cache of 600 positions (splits of
    more than one key block), bf16 in a CUDA graph; generate(cuda_graph=True) picks the fused step."""
    torch.manual_seed(0)
    m = Andromeda(from_name("tiny", dim=256, heads=24, dim_head=128, alibi_num_heads=12, depth=1)).eval()
    m = m.cuda().to(torch.bfloat16)
    prompt = torch.randint(0, 256, (1, 580), device="cuda")
    cache = m.new_cache(1, 600)
    dec = GraphedDecoder(m, cache)
    assert dec.kernels == "triton" and dec.graph is not None
    tokens, logits = m.generate(prompt, 12, return_logits=True, cuda_graph=True)
    full = Reference64(m.cfg.to_dict(), m.state_dict())(tokens)[:, 579:-1]  # float64 of the bf16 weights, no cache
    err = ((logits.double().cpu() - full).abs().max() / full.abs().max()).item()
    assert err < 3e-2, err
