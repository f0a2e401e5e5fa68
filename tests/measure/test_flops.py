"""measure.flops against torch.utils.flop_counter.FlopCounterMode on real forward/backward passes."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from andromeda.measure.facts import ModelFacts, facts_from_config
from andromeda.measure.flops import (
    DATASHEET_GB_PER_S,
    PEAK_TFLOPS,
    achieved_tflops,
    attention_pairs,
    attention_recomputes,
    backward_flops,
    decode_flops,
    device_bandwidth_gb_per_s,
    device_peak_tflops,
    forward_flops,
    mfu,
    recomputed_forward_flops,
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
    # eager attention's autograd does 2 bmm per forward bmm (probabilities saved): attention_recompute=False
    measured_bmm = sum(v for k, v in ops.items() if k in BMM)
    assert measured_bmm == 2 * fwd.attention
    assert backward_flops(fwd, attention_recompute=False).attention == measured_bmm
    # a recomputing kernel (FlashAttention style) is charged 2.5x: scores again, dP, dV, dQ, dK
    assert bwd.attention == 2.5 * 4 * B * cfg.heads * N * N * cfg.dim_head * cfg.depth
    step = train_step_flops(facts_from_config(cfg), B, N)
    assert step.total == fwd.total + bwd.total
    eager_step = train_step_flops(facts_from_config(cfg), B, N, attention_recompute=False)
    assert eager_step.total == fwd.total + measured_mm + measured_bmm  # the whole measured backward


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


# ---- backward per attention kernel, activation recompute, datasheet bandwidth -----------------------

# a hand-sized model: every number below is worked out from these, not from forward_flops
HAND = ModelFacts(params=0, non_embedding_params=0, vocab=100, dim=32, layers=3, heads=4, kv_heads=2, head_dim=8,
                  ff_hidden=64, ff_glu=False, causal=True, max_seq_len=64, tied_embeddings=False)


def test_train_step_by_hand_with_and_without_attention_recompute():
    b, n = 2, 10
    t = b * n  # 20 tokens
    # per layer: q, out: 2*t*32*32 each; k, v: 2*t*32*16 each -> 2*20*32*(32+32+16+16) = 122,880; 3 layers
    proj = 3 * 122_880
    ff = 3 * 2 * (2 * t * 32 * 64)  # two 32x64 matrices: 3 * 163,840 = 491,520
    head = 2 * t * 32 * 100  # 128,000
    attn = 3 * 2 * (2 * b * 4 * (n * (n + 1) // 2) * 8)  # scores + PV over 55 causal pairs: 3 * 14,080
    assert (proj, ff, head, attn) == (368_640, 491_520, 128_000, 42_240)
    fwd_total = proj + ff + head + attn
    flash = train_step_flops(HAND, b, n)
    eager = train_step_flops(HAND, b, n, attention_recompute=False)
    assert flash.total == fwd_total + 2 * (proj + ff + head) + 2.5 * attn
    assert eager.total == fwd_total + 2 * (proj + ff + head) + 2.0 * attn
    assert flash.total - eager.total == 0.5 * attn == 21_120
    # activation checkpointing re-runs the blocks' forward (not the LM head) once more; with torch's early stop
    # not the FFN output projection (one of the two 32 x 64 matrices)
    assert recomputed_forward_flops(HAND, b, n).total == proj + ff + attn
    assert recomputed_forward_flops(HAND, b, n, early_stop=True).total == proj + ff / 2 + attn
    glu = ModelFacts(**{**HAND.__dict__, "ff_glu": True})
    assert recomputed_forward_flops(glu, b, n, early_stop=True).ff == 3 * 2 * (2 * t * 32 * 64)  # in and gate


@pytest.mark.parametrize("impl,device,dtype,expected", [
    ("triton", "cuda", None, True), ("flex", "cuda", None, True), ("flex", "cpu", None, True),
    ("sdpa", "cuda", "bfloat16", True), ("sdpa", "cuda", torch.float32, True), ("sdpa", "cuda", torch.float64, False),
    ("sdpa", "cpu", torch.float32, True), ("sdpa", "cpu", torch.float64, True),
    ("sdpa_flash", "cuda", None, True), ("sdpa_efficient", "cuda", None, True), ("sdpa_cudnn", "cuda", None, True),
    ("sdpa_math", "cuda", None, False), ("eager", "cuda", None, False), ("eager", "cpu", None, False),
    ("flash_attention_2", "cuda", None, True), ("flex_attention", "cuda", None, True),
    ("kernels-community/flash-attn3", "cuda", None, True), ("xformers", "cuda", None, True),
])
def test_attention_recomputes_by_kernel(impl, device, dtype, expected):
    assert attention_recomputes(impl, device, dtype) is expected


def test_unknown_attention_impl_raises():
    with pytest.raises(ValueError, match="unknown whether"):
        attention_recomputes("paged_attention")


def test_sdpa_on_cpu_runs_the_fused_kernel_that_recomputes():
    """What attention_recomputes says of SDPA on CPU, checked on this torch: with and without a mask, with GQA,
    autograd runs the CPU flash kernel's backward, which gets the output and log-sum-exp, not probabilities."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Spy(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append((str(func), [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
            return func(*args, **(kwargs or {}))

    for kw, hkv in (({"is_causal": True}, 4), ({"attn_mask": torch.randn(1, 4, 6, 6)}, 4), ({"is_causal": True}, 2)):
        q = torch.randn(1, 4, 6, 8, requires_grad=True)
        k, v = (torch.randn(1, hkv, 6, 8, requires_grad=True) for _ in range(2))
        with Spy() as spy:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != 4, **kw).sum().backward()
        names = [c for c, _ in spy.calls]
        assert "aten._scaled_dot_product_flash_attention_for_cpu_backward.default" in names, names
        assert not any(n.startswith(("aten.bmm", "aten._softmax")) for n in names), names
        # its tensor arguments: grad_out, q, k, v, out (B, H, N, D) and the log-sum-exp (B, H, N); no (B, H, N, N)
        # probabilities (a mask, the one N x N input, is a keyword argument)
        shapes = dict(spy.calls)["aten._scaled_dot_product_flash_attention_for_cpu_backward.default"]
        assert set(shapes) <= {(1, 4, 6, 8), (1, hkv, 6, 8), (1, 4, 6)}, shapes


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", 3350.0), ("NVIDIA H100 PCIe", 2000.0), ("NVIDIA H100 NVL", 3900.0),
    ("NVIDIA H200", 4800.0), ("NVIDIA H200 NVL", 4800.0),
    ("NVIDIA A100-SXM4-80GB", 2039.0), ("NVIDIA A100 80GB PCIe", 1935.0),
    ("NVIDIA A100-SXM4-40GB", 1555.0), ("NVIDIA A100-PCIE-40GB", 1555.0),
    ("NVIDIA A10G", 600.0), ("NVIDIA L4", 300.0), ("NVIDIA L40S", 864.0), ("NVIDIA GeForce RTX 4090", 1008.0),
])
def test_datasheet_bandwidth(name, expected):
    assert device_bandwidth_gb_per_s(name) == expected


@pytest.mark.parametrize("name", ["cpu", "NVIDIA L40", "NVIDIA RTX A1000", "NVIDIA GH200", "NVIDIA A100"])
def test_unknown_devices_have_no_bandwidth(name):
    assert device_bandwidth_gb_per_s(name) is None  # (an A100 whose name has no memory size included)


def test_bandwidth_table_covers_the_peak_table():
    """Every device with a peak has a bandwidth (the A100 split by memory size)."""
    covered = {k.split(" 80GB")[0].split(" 40GB")[0] for k in DATASHEET_GB_PER_S}
    assert covered == set(PEAK_TFLOPS)
