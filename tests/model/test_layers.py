"""Token shift, QK-norm, DeepNorm and block wiring against formulas written out here."""

import pytest
import torch
import torch.nn.functional as F

from andromeda.model import from_name
from andromeda.model.layers import Block, TokenShift
from andromeda.model.norms import QKNorm, deepnorm_alpha, deepnorm_beta
from andromeda.model.positional import head_slopes


def _shift_reference(x, s):
    b, n, d = x.shape
    c = d // (s + 1)
    out = x.clone()
    for k in range(s + 1):
        for i in range(n):
            out[:, i, k * c : (k + 1) * c] = x[:, i - k, k * c : (k + 1) * c] if i - k >= 0 else 0
    return out


@pytest.mark.parametrize("s,d", [(1, 8), (1, 9), (2, 10), (3, 7)])
def test_token_shift_formula(s, d):
    x = torch.randn(2, 6, d)
    out, _ = TokenShift(s, d)(x)
    assert torch.equal(out, _shift_reference(x, s))


def test_token_shift_state_continues_sequence():
    x = torch.randn(2, 9, 12)
    ts = TokenShift(2, 12)
    full, _ = ts(x)
    a, state = ts(x[:, :4])
    b, _ = ts(x[:, 4:], state)
    assert torch.equal(torch.cat([a, b], 1), full)


def test_qk_norm_unit_norm_and_gains():
    x = torch.randn(2, 3, 5, 8) * 7
    assert torch.allclose(QKNorm(3, 8, False)(x).norm(dim=-1), torch.ones(2, 3, 5), atol=1e-6)
    qn = QKNorm(3, 8, True)
    with torch.no_grad():
        qn.gain.copy_(torch.rand(3, 1, 8) + 0.5)
    ref = x / x.norm(dim=-1, keepdim=True) * qn.gain
    assert torch.allclose(qn(x), ref, atol=1e-6)


def test_deepnorm_constants():
    assert deepnorm_alpha(32) == pytest.approx(64**0.25)
    assert deepnorm_beta(32) == pytest.approx(256**-0.25)


def _block_inputs(cfg, n=10):
    x = torch.randn(2, n, cfg.dim)
    return x, head_slopes(cfg.heads, cfg.n_alibi_heads)


def test_prenorm_block_wiring():
    cfg = from_name("tiny", shift_tokens=0)
    blk = Block(cfg)
    x, slopes = _block_inputs(cfg)
    h = x + blk.attn(blk.attn_norm(x), None, slopes)
    ref = h + blk.ff(blk.ff_norm(h))
    assert torch.allclose(blk(x, None, slopes), ref, atol=1e-6)


def test_parallel_block_wiring():
    cfg = from_name("tiny", shift_tokens=0, parallel_block=True)
    blk = Block(cfg)
    x, slopes = _block_inputs(cfg)
    h = blk.norm(x)
    ref = x + blk.attn(h, None, slopes) + blk.ff(h)
    assert torch.allclose(blk(x, None, slopes), ref, atol=1e-6)


def test_deepnorm_block_wiring():
    cfg = from_name("tiny", shift_tokens=0, deepnorm=True, depth=6)
    blk = Block(cfg)
    a = (2 * 6) ** 0.25
    x, slopes = _block_inputs(cfg)
    h = F.layer_norm(a * x + blk.attn(x, None, slopes), (cfg.dim,), blk.attn_norm.weight, blk.attn_norm.bias)
    ref = F.layer_norm(a * h + blk.ff(h), (cfg.dim,), blk.ff_norm.weight, blk.ff_norm.bias)
    assert torch.allclose(blk(x, None, slopes), ref, atol=1e-5)


def test_deepnorm_init_gains():
    from andromeda.model import Andromeda

    cfg = from_name("tiny", dim=256, dim_head=64, heads=4, depth=8, deepnorm=True)
    m = Andromeda(cfg)
    beta = (8 * 8) ** -0.25

    def xavier_std(w, gain):
        fan_out, fan_in = w.shape
        return gain * (2.0 / (fan_in + fan_out)) ** 0.5

    blk = m.blocks[3]
    for lin, gain in [(blk.attn.to_q, 1.0), (blk.attn.to_k, 1.0), (blk.attn.to_v, beta),
                      (blk.attn.to_out, beta), (blk.ff.w_in, beta), (blk.ff.w_out, beta)]:
        assert float(lin.weight.detach().std()) == pytest.approx(xavier_std(lin.weight, gain), rel=0.12)


def test_shift_applies_to_both_sublayer_inputs():
    cfg = from_name("tiny", shift_tokens=1)
    blk = Block(cfg)
    x, slopes = _block_inputs(cfg)
    h = x + blk.attn(_shift_reference(blk.attn_norm(x), 1), None, slopes)
    ref = h + blk.ff(_shift_reference(blk.ff_norm(h), 1))
    assert torch.allclose(blk(x, None, slopes), ref, atol=1e-6)
