"""measure.facts: analytic parameter counts against models actually built (on the meta device)."""

import pytest
import torch

from andromeda.measure.facts import decode_step_bytes, facts_from_config, kv_cache_bytes_per_token
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

    from andromeda.measure.flops import device_peak_tflops
    from andromeda.measure.timing import TimingConfig
    from andromeda.runs.context import RunContext

    gpu = "NVIDIA H100 80GB HBM3"
    ctx = RunContext(device=torch.device("cuda"), dtype=torch.float32, timing=TimingConfig(),
                     env={"gpu_names": [gpu]}, peak_tflops=123.0)
    assert ctx.peak_for("float32") == 123.0  # the run's own figure (a manifest override) for its dtype
    assert ctx.peak_for("bfloat16") == device_peak_tflops(gpu, "bfloat16")
    assert ctx.peak_for_precision("bf16") == ctx.peak_for("bfloat16") and ctx.peak_for_precision("fp32") == 123.0
    assert device_peak_tflops(gpu, "bfloat16") > 10 * device_peak_tflops(gpu, "float32")
    cpu = RunContext(device=torch.device("cpu"), dtype=torch.float32, timing=TimingConfig(), env={})
    assert cpu.peak_for("bfloat16") is None


# ---- decode_step_bytes: the bytes a decode step must read ----------------------------------------------
# The tiny preset by hand: dim 64, depth 2, 4 heads of 16, 1 KV head, FFN 256 (bias), LayerNorm, QK-norm
# gains, vocab 320. One block: q 64*64 + k 64*16 + v 64*16 + out 64*64 = 10,240; QK gains 4*16 + 16 = 80;
# FFN 64*256 + 256 + 256*64 + 64 = 33,088; two LayerNorms 2 * 128 = 256 -> 43,664.
TINY_BLOCKS = 2 * 43_664 + 128  # + the final LayerNorm = 87,456
TINY_KV_PER_TOKEN_BF16 = 2 * 2 * 1 * 16 * 2  # K and V, 2 layers, 1 KV head, head dim 16, 2 bytes = 128


def _weights_bytes_of_built_model(cfg) -> int:
    """An independent count: every parameter tensor of the built model except the input-embedding tables."""
    with torch.device("meta"):
        model = Andromeda(cfg)
    unique = {id(p): (n, p) for n, p in model.named_parameters()}
    return sum(p.numel() for n, p in unique.values() if not n.startswith("embed."))


def test_decode_step_bytes_untied_by_hand():
    cfg = from_name("tiny")
    f = facts_from_config(cfg)
    head = 64 * 320  # the untied LM head: 20,480
    assert _weights_bytes_of_built_model(cfg) == TINY_BLOCKS + head
    # bf16 weights: blocks + head + ONE embedding row (64), not the 320 x 64 table; KV cache at 10 keys
    expected = (TINY_BLOCKS + head + 64) * 2 + 10 * TINY_KV_PER_TOKEN_BF16
    assert expected == 217_280
    assert decode_step_bytes(f, 10, weight_bytes=2, kv_bytes=2) == expected
    # every parameter (what model_speed counted before) is 320 * 64 * 2 - 64 * 2 bytes more
    assert (f.params * 2 + 10 * TINY_KV_PER_TOKEN_BF16) - expected == (320 * 64 - 64) * 2


def test_decode_step_bytes_tied_abs_pos_batch_by_hand():
    cfg = from_name("tiny", tie_embeddings=True, use_abs_pos_emb=True, alibi_pos_bias=False, alibi_num_heads=None)
    f = facts_from_config(cfg)
    assert _weights_bytes_of_built_model(cfg) == TINY_BLOCKS  # no head matrix of its own
    # the tied LM head reads the whole 320 x 64 embedding matrix; each of 3 sequences reads a token row and a
    # position row (2 * 64); fp32 weights; an int8 cache (1 byte) at a mean context of 7.5 keys
    expected = (TINY_BLOCKS + 320 * 64 + 3 * 2 * 64) * 4 + 3 * 7.5 * (2 * 2 * 1 * 16 * 1)
    assert expected == 434_720.0  # (87,456 + 20,480 + 384) * 4 + 1,440
    assert decode_step_bytes(f, 7.5, weight_bytes=4, kv_bytes=1, batch=3) == expected
    with pytest.raises(ValueError):
        decode_step_bytes(f, -1, 2, 2)


def test_decode_step_bytes_of_the_andromeda_preset():
    """The 2.46B preset at a 4,096-key context: 4.664 GB of weights + 67 MB of MQA cache, not the 258 MB table."""
    f = facts_from_config(from_name("andromeda"))
    L, d, f_hidden, V = 32, 2560, 10240, 50432
    block = (d * 24 * 128 + 2 * d * 128 + 24 * 128 * d  # q, k, v (1 KV head), out; no attention bias
             + 24 * 128 + 128  # QK-norm gains
             + d * f_hidden + f_hidden + f_hidden * d + d  # FFN with bias
             + 2 * 2 * d)  # two LayerNorms
    weights = L * block + 2 * d + d * V  # final LayerNorm, untied LM head
    kv = 4096 * 2 * L * 1 * 128 * 2
    assert decode_step_bytes(f, 4096, 2, 2) == (weights + d) * 2 + kv
    assert f.params * 2 - (weights + d) * 2 == (V * d - d) * 2  # the input table, less its one row: 258 MB
