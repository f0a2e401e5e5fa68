"""Run by tests/model/test_qk_rope.py in a child pytest with TRITON_INTERPRET=1 (not collected): the model with
QK-norm, rotary and xPos in our fused kernel (TritonTuning.fused_qk, with the Triton backend) against the same
model with them as PyTorch ops."""

import os
from unittest import mock

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

import torch  # noqa: E402

from andromeda.model import Andromeda, from_name  # noqa: E402
from andromeda.model.backends import TritonTuning, qk_rope, tuned  # noqa: E402
from andromeda.model.backends.block_count import count_blocks  # noqa: E402

TILES = dict(BLOCK_M=16, BLOCK_N=16, TMA=False)


def _model(**over) -> Andromeda:
    torch.manual_seed(0)
    m = Andromeda(from_name("tiny", xpos_scale_base=2, max_seq_len=1024, attn_backend="triton", **over))
    with torch.no_grad():
        for blk in m.blocks:  # gains away from 1, so that their gradients and the norms' bound matter
            blk.attn.q_norm.gain.uniform_(0.5, 1.5)
            blk.attn.k_norm.gain.uniform_(0.5, 1.5)
        m.alibi_slopes.mul_(32.0)  # steep: far ALiBi keys fall under the skip bound at these lengths
    return m


def _run(m: Andromeda, tokens: torch.Tensor, fused: bool):
    """Logits, every parameter's gradient of a loss over them, the skipped-tile count, and the fused op's calls."""
    m.zero_grad(set_to_none=True)
    calls = mock.patch.object(qk_rope, "qk_rope", wraps=qk_rope.qk_rope)
    with tuned(TritonTuning(skip_min_keys=0, fused_qk=fused, config_override={"fwd": TILES, "bwd": TILES})), \
            count_blocks() as counted, calls as spy:
        logits = m(tokens)
        (logits.float().square().mean() + logits.logsumexp(-1).mean()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return logits.detach(), grads, counted.tiles()["forward"], spy.call_count


def test_fused_qk_model_equals_the_pytorch_ops_forward_and_gradients():
    """xPos over several anchor blocks (scale base 2), QK-norm gains, ALiBi heads skipping far keys by the norms
    the fused kernel returns: logits and every gradient (the QK-norm gains' included) equal the model with the
    PyTorch ops, and the skipped tiles are the same."""
    m = _model()
    tokens = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(1))
    got, got_g, got_tiles, calls = _run(m, tokens, fused=True)
    want, want_g, want_tiles, none = _run(m, tokens, fused=False)
    assert calls == 2 * m.cfg.depth and none == 0  # q and k of every layer, only when on
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert got_g.keys() == want_g.keys() and "blocks.0.attn.q_norm.gain" in got_g
    for name in want_g:
        scale = want_g[name].abs().max().clamp_min(1e-6)
        assert (got_g[name] - want_g[name]).abs().max() <= 1e-4 * scale, name
    assert got_tiles == want_tiles
    with torch.no_grad(), tuned(TritonTuning(skip_far=False, fused_qk=True,
                                             config_override={"fwd": TILES, "bwd": TILES})), count_blocks() as dense:
        m(tokens)
    assert got_tiles < dense.tiles()["forward"]  # the ALiBi heads did skip, by the fused kernel's norms


def test_fused_qk_cached_chunks_equal_the_whole_forward():
    """Prefill in three chunks through a KV cache (each chunk's queries after the earlier keys, the cache keeping
    the fused kernel's key norms) gives the whole forward's logits, both fused."""
    m = _model().eval()
    tokens = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), tuned(TritonTuning(skip_min_keys=0, fused_qk=True,
                                             config_override={"fwd": TILES, "bwd": TILES})):
        whole = m(tokens)
        cache = m.new_cache(1, 96)
        parts = torch.cat([m(tokens[:, a:b], cache=cache) for a, b in ((0, 40), (40, 72), (72, 96))], dim=1)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-4)


def test_fused_qk_without_qk_norm_is_rotary_and_xpos_alone():
    """A model without QK-norm still fuses rotary and xPos (norm off in the kernel): same logits as the ops."""
    torch.manual_seed(0)
    m = Andromeda(from_name("tiny", xpos_scale_base=2, max_seq_len=1024, attn_backend="triton", qk_norm=False,
                            qk_norm_dim_scale=False))
    tokens = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(3))
    got, got_g, _, calls = _run(m, tokens, fused=True)
    want, want_g, _, _ = _run(m, tokens, fused=False)
    assert calls == 2 * m.cfg.depth
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for name in want_g:
        scale = want_g[name].abs().max().clamp_min(1e-6)
        assert (got_g[name] - want_g[name]).abs().max() <= 1e-4 * scale, name
