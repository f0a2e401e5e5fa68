"""bench.facts: analytic parameter counts against models actually built (on the meta device)."""

import pytest
import torch

from andromeda.bench.facts import facts_from_config, kv_cache_bytes_per_token
from andromeda.model import Andromeda, ModelConfig, from_name

CASES = [
    ("tiny", {}),
    ("tiny", {"tie_embeddings": True}),
    ("tiny", {"use_abs_pos_emb": True, "alibi_pos_bias": False, "alibi_num_heads": None}),
    ("tiny", {"norm": "rmsnorm", "ff_glu": True, "ff_activation": "silu", "ff_bias": False}),
    ("tiny", {"attn_bias": True, "kv_heads": 2, "qk_norm_dim_scale": False}),
    ("tiny", {"qk_norm": False, "qk_norm_dim_scale": False, "kv_heads": None, "ff_inner_dim": 100}),
    ("tiny", {"parallel_block": True, "shift_tokens": 0}),
    ("tiny", {"deepnorm": True}),
    ("small", {}),
    ("base", {"depth": 4}),
    ("1b", {"depth": 2, "tie_embeddings": True, "use_abs_pos_emb": True}),
]


@pytest.mark.parametrize("preset,overrides", CASES)
def test_param_count_matches_built_model(preset, overrides):
    cfg = from_name(preset, **overrides)
    with torch.device("meta"):
        model = Andromeda(cfg)
    facts = facts_from_config(cfg)
    assert facts.params == model.num_params()
    assert facts.non_embedding_params == model.num_params(exclude_embeddings=True)
    # and against an independent count over the module tree, deduplicating tied tensors
    unique = {id(p): p for p in model.parameters()}
    assert facts.params == sum(p.numel() for p in unique.values())


def test_shape_fields():
    cfg = from_name("tiny", kv_heads=2, ff_mult=3.0)
    f = facts_from_config(cfg)
    assert (f.vocab, f.dim, f.layers, f.heads, f.kv_heads, f.head_dim) == (320, 64, 2, 4, 2, 16)
    assert f.ff_hidden == 192 and f.ff_glu is False and f.causal is True
    assert f.max_seq_len == 256 and f.tied_embeddings is False and f.lm_head is True
    mha = facts_from_config(ModelConfig(num_tokens=300, dim=32, depth=1, heads=4, dim_head=8))
    assert mha.kv_heads == 4


def test_kv_cache_bytes_per_token_matches_real_cache():
    from andromeda.model import KVCache

    for kv_heads in (None, 2, 1):
        cfg = from_name("tiny", kv_heads=kv_heads)
        f = facts_from_config(cfg)
        batch, max_len = 3, 10
        cache = KVCache(cfg, batch, max_len, dtype=torch.bfloat16)
        stored = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
        assert kv_cache_bytes_per_token(f, 2) == stored / (batch * max_len)
    assert kv_cache_bytes_per_token(f, 0.5) == 2 * cfg.depth * 1 * cfg.dim_head * 0.5


def test_peak_for_uses_the_math_dtype_peak():
    """Mixed precision on float32 weights: MFU is against the bf16 peak, not the fp32 one."""
    import torch

    from andromeda.bench.context import RunContext
    from andromeda.bench.flops import device_peak_tflops
    from andromeda.bench.timing import TimingConfig

    gpu = "NVIDIA H100 80GB HBM3"
    ctx = RunContext(device=torch.device("cuda"), dtype=torch.float32, timing=TimingConfig(),
                     env={"gpu_names": [gpu]}, peak_tflops=123.0)
    assert ctx.peak_for("float32") == 123.0  # the run's own figure (a manifest override) for its dtype
    assert ctx.peak_for("bfloat16") == device_peak_tflops(gpu, "bfloat16")
    assert ctx.peak_for_precision("bf16") == ctx.peak_for("bfloat16") and ctx.peak_for_precision("fp32") == 123.0
    assert device_peak_tflops(gpu, "bfloat16") > 10 * device_peak_tflops(gpu, "float32")
    cpu = RunContext(device=torch.device("cpu"), dtype=torch.float32, timing=TimingConfig(), env={})
    assert cpu.peak_for("bfloat16") is None
