"""bench.flops against torch.utils.flop_counter.FlopCounterMode on real forward/backward passes."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from andromeda.bench.facts import facts_from_config
from andromeda.bench.flops import (
    PEAK_TFLOPS,
    achieved_tflops,
    attention_pairs,
    backward_flops,
    decode_flops,
    device_peak_tflops,
    forward_flops,
    mfu,
    train_step_flops,
)
from andromeda.model import Andromeda, ModelConfig, lm_loss

B, N = 2, 24
MM = {"mm", "addmm"}  # weight matmuls (nn.Linear)
BMM = {"bmm", "baddbmm"}  # attention q @ k^T and p @ v in the eager backend


def small_cfg(**kw) -> ModelConfig:
    base = dict(num_tokens=320, max_seq_len=64, dim=64, depth=2, heads=4, dim_head=16, causal=False,
                rotary_pos_emb=False, rotary_xpos=False, alibi_pos_bias=False, attn_backend="eager",
                shift_tokens=1, qk_norm=True, qk_norm_dim_scale=True)
    base.update(kw)
    return ModelConfig(**base)


def by_op(counter: FlopCounterMode) -> dict[str, int]:
    out: dict[str, int] = {}
    for op, n in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[1]  # aten.mm.default -> mm
        out[name] = out.get(name, 0) + n
    return out


CFGS = {
    "mha": {},
    "mqa": {"kv_heads": 1},
    "gqa": {"kv_heads": 2, "ff_glu": True, "ff_activation": "silu", "ff_bias": False, "attn_bias": True},
    "tied_rmsnorm": {"ff_inner_dim": 96, "tie_embeddings": True, "norm": "rmsnorm", "dim_head": 8},
}


@pytest.mark.parametrize("name", list(CFGS))
def test_forward_flops_match_flop_counter(name):
    cfg = small_cfg(**CFGS[name])
    torch.manual_seed(0)
    model = Andromeda(cfg)
    tokens = torch.randint(0, cfg.num_tokens, (B, N))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(tokens)
    ops = by_op(fc)
    ours = forward_flops(facts_from_config(cfg), B, N)
    assert ours.total == fc.get_total_flops()
    assert ours.matmul_nonattention == sum(v for k, v in ops.items() if k in MM)
    assert ours.attention == sum(v for k, v in ops.items() if k in BMM)


@pytest.mark.parametrize("lm_head,positions", [("last", B), ("none", 0)])
def test_lm_head_modes_match_flop_counter(lm_head, positions):
    cfg = small_cfg()
    model = Andromeda(cfg)
    tokens = torch.randint(0, cfg.num_tokens, (B, N))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(tokens, logits=lm_head)
    ours = forward_flops(facts_from_config(cfg), B, N, lm_head=lm_head)
    assert ours.total == fc.get_total_flops()
    assert ours.lm_head == 2 * positions * cfg.dim * cfg.num_tokens


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_backward_weight_matmuls_are_twice_forward(name):
    cfg = small_cfg(**CFGS[name])
    model = Andromeda(cfg)
    tokens = torch.randint(0, cfg.num_tokens, (B, N))
    loss = lm_loss(model(tokens), tokens)
    with FlopCounterMode(display=False) as fc:
        loss.backward()
    ops = by_op(fc)
    fwd = forward_flops(facts_from_config(cfg), B, N)
    bwd = backward_flops(fwd)
    measured_mm = sum(v for k, v in ops.items() if k in MM)
    assert bwd.matmul_nonattention == measured_mm  # grad input + grad weight for every linear
    # eager attention's autograd does 2 bmm per forward bmm; the convention charges 2.5x (recompute)
    assert sum(v for k, v in ops.items() if k in BMM) == 2 * fwd.attention
    assert bwd.attention == 2.5 * 4 * B * cfg.heads * N * N * cfg.dim_head * cfg.depth
    step = train_step_flops(facts_from_config(cfg), B, N)
    assert step.total == fwd.total + bwd.total


def test_causal_pairs_match_mask_counts():
    for n_new, past in [(1, 0), (7, 0), (1, 9), (5, 11), (16, 16)]:
        n_k = past + n_new
        # bottom-right aligned causal mask: query i (absolute position past + i) sees keys <= past + i
        keep = np.tril(np.ones((n_new, n_k), dtype=bool), k=past)
        assert attention_pairs(n_new, past, causal=True) == keep.sum()
        assert attention_pairs(n_new, past, causal=False) == n_new * n_k
    assert attention_pairs(8, causal=True) == 8 * 9 // 2


def test_causal_forward_counts_half_plus_diagonal():
    cfg = small_cfg()
    f = facts_from_config(cfg)
    full = forward_flops(f, B, N, causal=False)
    causal = forward_flops(f, B, N, causal=True)
    assert causal.attention == full.attention * (N + 1) / (2 * N)
    assert causal.projections == full.projections and causal.ff == full.ff


def test_decode_flops_one_token_with_cache():
    cfg = small_cfg(causal=True, kv_heads=2)
    f = facts_from_config(cfg)
    ctx = 40
    d = decode_flops(f, B, ctx)
    h, hkv, hd, L = cfg.heads, 2, cfg.dim_head, cfg.depth
    assert d.attention == L * 2 * 2 * B * h * (ctx + 1) * hd
    assert d.projections == L * 2 * B * cfg.dim * (2 * h * hd + 2 * hkv * hd)
    assert d.lm_head == 2 * B * cfg.dim * cfg.num_tokens
    # with a real cache, the flop counter sees the same weight matmuls for the one new token
    model = Andromeda(cfg.replace(causal=True))
    cache = model.new_cache(B, ctx + 1)
    model(torch.randint(0, cfg.num_tokens, (B, ctx)), cache=cache, logits="none")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randint(0, cfg.num_tokens, (B, 1)), cache=cache, logits="last")
    ops = by_op(fc)
    assert d.matmul_nonattention == sum(v for k, v in ops.items() if k in MM)
    assert d.attention == sum(v for k, v in ops.items() if k in BMM)  # one query: nothing is masked


def test_mqa_shrinks_only_kv_projections():
    f_mha = facts_from_config(small_cfg())
    f_mqa = facts_from_config(small_cfg(kv_heads=1))
    a, b = forward_flops(f_mha, B, N), forward_flops(f_mqa, B, N)
    saved = 2 * 2 * B * N * 64 * (4 - 1) * 16 * 2  # k and v: 2*T*dim*(H - H_kv)*D, both, per layer
    assert a.projections - b.projections == saved
    assert a.attention == b.attention and a.ff == b.ff


def test_achieved_and_mfu():
    assert achieved_tflops(2e12, 0.5) == 4.0
    assert mfu(989.5e12, 2.0, 989.5) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None
    with pytest.raises(ValueError):
        achieved_tflops(1.0, 0.0)


@pytest.mark.parametrize("name,dtype,expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
    ("NVIDIA H100 PCIe", "torch.bfloat16", 756.5),
    ("NVIDIA H100 NVL", "fp16", 835.5),
    ("NVIDIA H200", "tf32", 494.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100 80GB PCIe", "float32", 19.5),
    ("NVIDIA A10G", "bf16", 70.0),
    ("NVIDIA L4", "fp16", 121.0),
    ("NVIDIA L40S", "bf16", 362.05),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
])
def test_device_peaks(name, dtype, expected):
    assert device_peak_tflops(name, dtype) == expected


@pytest.mark.parametrize(
    "name", ["cpu", "NVIDIA L40", "NVIDIA RTX A1000", "Tesla T4", "NVIDIA A10", "NVIDIA GH200"]
)
def test_unknown_devices_have_no_peak(name):
    assert device_peak_tflops(name, "bf16") is None
    assert device_peak_tflops(name, "bf16", override=123.0) == 123.0


def test_dtypes_without_a_column_give_none_and_garbage_raises():
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", torch.float64) is None
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 67.0
    with pytest.raises(ValueError, match="unknown dtype"):
        device_peak_tflops("NVIDIA H100 80GB HBM3", "bf61")


def test_peak_table_is_dense_and_consistent():
    for key, peaks in PEAK_TFLOPS.items():
        assert set(peaks) == {"bf16", "fp16", "tf32", "fp32"}, key
        assert peaks["bf16"] >= peaks["tf32"] >= peaks["fp32"] * 0.99, key
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.5
