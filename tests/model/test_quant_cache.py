"""Quantized KV caches: codes and scales against the formula, error bounds, generation, memory."""

import pytest
import torch

from andromeda.model import Andromeda, KVCache, from_name
from andromeda.model.quant import dequantize, quantize


@pytest.mark.parametrize("bits,qmax", [(8, 127), (4, 7)])
@pytest.mark.parametrize("group", [8, 16])
def test_round_trip_within_half_a_step(bits, qmax, group):
    x = torch.randn(3, 5, 7, 32) * torch.rand(3, 5, 7, 1) * 10  # varied scales per vector
    codes, scale = quantize(x, bits, group)
    back = dequantize(codes, scale, bits, group, torch.float32)
    # the bound, written out: per group, step = absmax / qmax, error <= step / 2
    step = x.reshape(3, 5, 7, 32 // group, group).abs().amax(-1) / qmax
    err = (back - x).abs().reshape(3, 5, 7, 32 // group, group).amax(-1)
    assert torch.all(err <= step / 2 + 1e-6)
    assert codes.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert codes.shape[-1] == (32 if bits == 8 else 16)


def test_int4_packing_layout():
    x = torch.tensor([[7.0, -7.0, 0.0, 1.0, -1.0, 3.0, -6.6, 2.0]])  # absmax 7 -> step 1; -6.6 rounds to -7
    codes, scale = quantize(x, 4, 8)
    assert scale.item() == pytest.approx(1.0)
    q = [7, -7, 0, 1, -1, 3, -7, 2]
    expected = [(q[i] + 8) | ((q[i + 1] + 8) << 4) for i in range(0, 8, 2)]
    assert codes.flatten().tolist() == expected


@pytest.mark.parametrize("quant,tol", [("int8", 0.05), ("int4", 1.0)])
def test_generation_with_quantized_cache_tracks_full_precision(quant, tol):
    cfg = from_name("tiny", dim_head=32, heads=2, dim=64)
    m = Andromeda(cfg).eval()
    prompt = torch.randint(0, 256, (2, 20))
    ref, ref_logits = m.generate(prompt, 10, return_logits=True)
    # teacher-force the reference tokens through a quantized cache: same inputs, compare logits
    cache = m.new_cache(2, 30, quant=quant, group_size=16)
    with torch.no_grad():
        got = [m(prompt, cache=cache, logits="last")[:, -1]]
        for t in range(9):
            got.append(m(ref[:, 20 + t : 21 + t], cache=cache, logits="last")[:, -1])
    diff = (torch.stack(got, 1) - ref_logits).abs().max().item()
    assert 0 < diff < tol
    out = m.generate(prompt, 10, cache_quant=quant)
    assert out.shape == (2, 30)


def test_full_precision_window_makes_recent_positions_exact():
    cfg = from_name("tiny")
    m = Andromeda(cfg).eval()
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        full = m(tokens)[:, -1]
        cache = m.new_cache(1, 12, quant="int4", group_size=16, window=12)  # window covers everything
        for t in range(12):
            last = m(tokens[:, t : t + 1], cache=cache, logits="last")[:, -1]
    assert torch.allclose(last, full, atol=1e-5)


def test_cache_bytes_shrink_as_the_formula_says():
    cfg = from_name("tiny", dim_head=32, heads=2, dim=64)
    d, g = 32, 16
    fp = KVCache(cfg, 2, 64, dtype=torch.float16)
    q8 = KVCache(cfg, 2, 64, dtype=torch.float16, quant="int8", group_size=g)
    q4 = KVCache(cfg, 2, 64, dtype=torch.float16, quant="int4", group_size=g)
    per_vec = {"fp16": 2 * d, "int8": d + 4 * d // g, "int4": d // 2 + 4 * d // g}  # bytes per K or V vector
    vectors = 2 * cfg.depth * cfg.n_kv_heads  # K and V, every layer and KV head
    assert fp.bytes_per_token() == vectors * per_vec["fp16"]
    assert q8.bytes_per_token() == vectors * per_vec["int8"]
    assert q4.bytes_per_token() == vectors * per_vec["int4"]


def test_bad_quant_settings():
    from andromeda.errors import ConfigError

    cfg = from_name("tiny")
    with pytest.raises(ConfigError, match="cache.quant"):
        KVCache(cfg, 1, 8, quant="int3")
    with pytest.raises(ConfigError, match="cache.group_size"):
        KVCache(cfg, 1, 8, quant="int8", group_size=6)
