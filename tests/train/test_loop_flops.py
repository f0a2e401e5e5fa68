"""The training loop's FLOP accounting: model FLOPs with the attention kernel's own backward (MFU) and, with
activation checkpointing, the recomputed block forward on top (HFU), against torch's flop counter on a real
step and against a hand computation."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from andromeda.measure.facts import facts_from_config
from andromeda.model import Andromeda, ModelConfig, lm_loss
from andromeda.train import TrainConfig, Trainer
from andromeda.train.loop import enable_activation_checkpointing

B, N = 2, 12
# non-causal, so the eager kernel's full N x N matmuls are exactly what the FLOP formula counts
CFG = dict(num_tokens=100, max_seq_len=32, dim=32, depth=2, heads=4, dim_head=8, kv_heads=2, ff_mult=2.0,
           causal=False, rotary_pos_emb=False, rotary_xpos=False, alibi_pos_bias=False, shift_tokens=0)


def _hand(tokens_b: int) -> tuple[float, float, float, float]:
    """(weight-matmul forward, attention forward, LM head forward, FFN output projection) FLOPs of CFG by hand."""
    t = tokens_b * N
    proj = 2 * 2 * t * 32 * (32 + 32 + 16 + 16)  # 2 layers: q, out 32x32; k, v 32x16 (2 KV heads of 8)
    ff_out = 2 * (2 * t * 64 * 32)  # 2 layers, the 64 -> 32 output matrix
    ff = 2 * ff_out  # and the 32 -> 64 input matrix
    attn = 2 * 2 * (2 * tokens_b * 4 * N * N * 8)  # 2 layers, scores + PV, 4 heads, every pair
    head = 2 * t * 32 * 100
    return proj + ff, attn, head, ff_out


def _trainer(backend: str, checkpointing: bool, model_kw=None, **kw) -> Trainer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG, **(model_kw or {})}, attn_backend=backend)
    model = Andromeda(cfg)
    tc = TrainConfig(steps=1, batch=B, seq_len=N, warmup_steps=0, log_every=1, eval_every=0,
                     activation_checkpointing=checkpointing)
    return Trainer(model, tc, lambda pos: torch.randint(0, 100, (B, N)), facts=facts_from_config(cfg), **kw)


def _counted_step(model, checkpointing: bool) -> int:
    """FLOPs torch's flop counter sees in one forward + backward (recompute included)."""
    undo = enable_activation_checkpointing(model) if checkpointing else None
    model.train()
    tokens = torch.randint(0, 100, (B, N))
    try:
        with FlopCounterMode(display=False) as fc:
            lm_loss(model(tokens), tokens).backward()
    finally:
        if undo:
            undo()
    return fc.get_total_flops()


def test_eager_step_is_model_flops_with_saved_probabilities():
    tr = _trainer("eager", checkpointing=False)
    weights, attn, head, ff_out = _hand(B)
    assert tr.attention_recompute is False  # eager attention saves its probabilities: backward 2x
    assert tr.flops_per_step == 3 * (weights + head) + 3 * attn
    assert tr.hardware_flops_per_step is None  # nothing recomputed: no HFU
    assert tr.flops_per_step == _counted_step(tr.model, checkpointing=False)


def test_checkpointed_step_adds_the_block_forward_for_hfu():
    tr = _trainer("eager", checkpointing=True, peak_tflops=1.0)
    weights, attn, head, ff_out = _hand(B)
    assert tr.flops_per_step == 3 * (weights + head) + 3 * attn  # MFU's count is unchanged
    # the blocks' forward once more, no LM head, and (torch's early stop) not the FFN output projection,
    # whose output no backward needs: the block ends in x + W_out(h)
    assert tr.hardware_flops_per_step == tr.flops_per_step + weights - ff_out + attn
    assert tr.hardware_flops_per_step == _counted_step(tr.model, checkpointing=True)
    rec = tr.run().history[0]
    assert rec["hfu"] / rec["mfu"] == pytest.approx(tr.hardware_flops_per_step / tr.flops_per_step, rel=1e-12)
    assert rec["hardware_tflops"] / rec["tflops"] == pytest.approx(tr.hardware_flops_per_step / tr.flops_per_step)


@pytest.mark.parametrize("model_kw", [{"deepnorm": True}, {"dropout": 0.1}])
def test_checkpointed_blocks_that_end_in_a_saved_op_recompute_everything(model_kw):
    """DeepNorm's closing LayerNorm and a residual dropout save tensors after the FFN output projection, so the
    recompute runs it too: the whole block forward again."""
    tr = _trainer("eager", checkpointing=True, model_kw=model_kw)
    weights, attn, head, ff_out = _hand(B)
    assert tr.hardware_flops_per_step == tr.flops_per_step + weights + attn
    torch.manual_seed(0)
    assert tr.hardware_flops_per_step == _counted_step(tr.model, checkpointing=True)


def test_checkpointed_hf_llama_skips_its_down_projection():
    pytest.importorskip("transformers")
    from andromeda.sources.models import build

    bundle = build("hf:matched:tiny?max_seq_len=32", torch.device("cpu"), torch.float32)
    model, f = bundle.model, bundle.facts
    model.config._attn_implementation = "eager"  # probabilities saved: backward 2x, as the counter sees it
    tc = TrainConfig(steps=1, batch=B, seq_len=N, warmup_steps=0, activation_checkpointing=True)
    tr = Trainer(model, tc, lambda pos: torch.randint(0, f.vocab, (B, N)), facts=f)
    t, d, h, hkv, hd, L, ffh = B * N, f.dim, f.heads, f.kv_heads, f.head_dim, f.layers, f.ff_hidden
    weights = L * (2 * t * d * (2 * h * hd + 2 * hkv * hd) + 3 * 2 * t * d * ffh)  # gated FFN: 3 matrices
    attn = L * 2 * (2 * B * h * (N * (N + 1) // 2) * hd)  # causal pairs
    step = 3 * (weights + 2 * t * d * f.vocab) + 3 * attn
    assert tr.attention_recompute is False and tr.flops_per_step == step
    assert tr.hardware_flops_per_step == step + weights - L * 2 * t * ffh * d + attn


def test_recomputing_kernels_are_charged_two_and_a_half():
    weights, attn, head, ff_out = _hand(B)
    for backend in ("sdpa", "flex"):  # on CPU: the fused CPU SDPA kernel and FlexAttention both recompute
        tr = _trainer(backend, checkpointing=False)
        assert tr.attention_recompute is True
        assert tr.flops_per_step == 3 * (weights + head) + 3.5 * attn
    forced = _trainer("eager", checkpointing=False, attention_recompute=True)  # an explicit setting wins
    assert forced.flops_per_step == 3 * (weights + head) + 3.5 * attn
