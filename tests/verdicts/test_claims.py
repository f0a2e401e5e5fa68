"""verdicts.claims: the spec's claims against hand-computed floors, KV-cache sizes and verdict logic (CPU)."""

import json
import math

import pytest

from andromeda.cli import main
from andromeda.errors import ConfigError
from andromeda.measure.facts import facts_from_config, kv_cache_bytes_per_token
from andromeda.model import ModelConfig
from andromeda.verdicts.claims import (
    Basis,
    check_claims,
    check_latency,
    floor_ms,
    forward_memory_floor,
    impossible,
    max_tokens_within,
    prefill_flops,
    preset_facts,
    presets_by_size,
)
from andromeda.verdicts.claims_file import LatencyClaim, load_claims

H100_BF16 = 989.5  # TFLOP/s, dense, NVIDIA H100 SXM datasheet


@pytest.fixture(scope="module")
def claims():
    return load_claims()


def _ref(claims, key):
    return facts_from_config(ModelConfig.from_dict(claims.references[key].config))


def test_kv_bytes_per_token_of_gpt3_and_llama_by_hand(claims):
    gpt3, llama = _ref(claims, "gpt3-175b"), _ref(claims, "llama-7b")
    # K and V, every layer, every head (MHA), head dim 128, 2 bytes (fp16)
    assert kv_cache_bytes_per_token(gpt3, 2) == 2 * 96 * 96 * 128 * 2 == 4_718_592
    assert kv_cache_bytes_per_token(llama, 2) == 2 * 32 * 32 * 128 * 2 == 524_288
    # Andromeda's default: 32 layers, one KV head (multi-query), head dim 128
    assert kv_cache_bytes_per_token(preset_facts("andromeda"), 2) == 2 * 32 * 1 * 128 * 2 == 16_384


def test_reference_parameter_counts_from_their_shapes(claims):
    d, L, V, T = 12288, 96, 50257, 2048
    # GPT-3: per layer 12 d^2 weights + 13 d biases/LayerNorm; token + position embeddings (tied head); final LN
    assert _ref(claims, "gpt3-175b").params == L * (12 * d * d + 13 * d) + V * d + T * d + 2 * d
    assert _ref(claims, "llama-7b").params == 6_738_415_616  # the released LLaMA-7B checkpoint


def test_floor_of_32k_tokens_on_the_andromeda_preset_at_h100_datasheet_rate():
    N = 32_000
    # per layer, dim 2560, 24 query heads x 128, 1 KV head, FFN 10240 (two matrices)
    proj = 2 * N * 2560 * (2 * 24 * 128 + 2 * 1 * 128)  # q, out: 2560 <-> 3072; k, v: 2560 -> 128
    attn = 2 * 2 * 24 * 128 * (N * (N + 1) // 2)  # q k^T and p v over the causal pairs
    ff = 2 * N * 2560 * 10240 * 2
    head = 2 * 2560 * 50432  # logits at the last position only
    flops = 32 * (proj + attn + ff) + head
    assert flops == 342_261_756_067_840
    assert prefill_flops(preset_facts("andromeda"), 1, N) == flops
    assert floor_ms(flops, H100_BF16) == pytest.approx(flops / 989.5e12 * 1e3, rel=1e-12)
    assert floor_ms(flops, H100_BF16) == pytest.approx(345.89, abs=0.01)  # > 100 ms: impossible


def test_verdict_logic(claims):
    assert impossible(345.9, 100.0) and not impossible(99.0, 100.0) and not impossible(100.0, 100.0)
    claim = next(c for c in claims.claims if c.id == "prefill_32k")
    sheet = Basis("H100 SXM", H100_BF16, "datasheet", 80e9, False, H100_BF16, "no GPU here")
    r = check_latency(claim, sheet, presets_by_size(), 0.5, None)
    assert r.verdict == "impossible" and "346 ms" in r.reason
    assert r.details["required_mfu"] == pytest.approx(3.4589, abs=1e-3)
    fast = Basis("given device", 5000.0, "given", 80e9, False, None, "no GPU here")
    r = check_latency(claim, fast, presets_by_size(), 0.5, None)
    assert r.verdict == "not measured"  # possible by physics, but nothing was measured
    easy = LatencyClaim(id="x", text="x", kind="latency", preset="tiny", tokens=128, max_ms=1000.0)
    assert check_latency(easy, sheet, presets_by_size(), 0.5, None).verdict == "not measured"


def test_search_for_what_meets_a_failed_claim(claims):
    claim = next(c for c in claims.claims if c.id == "prefill_32k")
    sheet = Basis("H100 SXM", H100_BF16, "datasheet", 80e9, False, H100_BF16)
    d = check_latency(claim, sheet, presets_by_size(), 0.5, None).details
    floors = {s["preset"]: s["floor_ms"] for s in d["presets"]}
    meets = [p for p in presets_by_size() if floors[p] <= 100.0]
    assert d["largest_preset_floor"] == meets[-1] == "base"
    assert d["largest_preset_plausible"] == [p for p in meets if floors[p] / 0.5 <= 100.0][-1]
    n = d["max_tokens_at_peak"]
    f = preset_facts("andromeda")
    assert floor_ms(prefill_flops(f, 1, n), H100_BF16) <= 100.0 < floor_ms(prefill_flops(f, 1, n + 1), H100_BF16)
    assert max_tokens_within(f, 1, 1e-9, H100_BF16) == 0
    assert presets_by_size("base") == ["tiny", "small", "base"]
    with pytest.raises(ConfigError):
        presets_by_size("huge")


def test_memory_claims_on_each_basis(claims):
    res = {r.id: r for r in check_claims(device="cpu").results}
    gpt3, llama = res["memory_vs_gpt3"], res["memory_vs_llama"]
    assert gpt3.verdict == "met" and llama.verdict == "partly met"
    kv = llama.details["bases"][0]
    assert kv["factor"] == 524_288 / 16_384 == 32 and kv["met"]
    w = llama.details["bases"][1]
    assert w["factor"] == pytest.approx(6_738_415_616 / preset_facts("andromeda").params) and not w["met"]
    # the context from which weights + KV cache reach 10x
    a_w, r_w = w["andromeda"], w["reference"]
    n = llama.details["crossover_tokens"]

    def total_factor(t):
        return (r_w + 524_288 * t) / (a_w + 16_384 * t)

    assert total_factor(n) >= 10 > total_factor(n - 1)


def test_context_claim_and_cpu_labels():
    result = check_claims(device="cpu")
    assert result.basis.peak_tflops == H100_BF16 and not result.basis.measured_here
    assert "cannot be measured here" in result.basis.note
    ctx = next(r for r in result.results if r.kind == "context")
    assert ctx.verdict == "not measured"
    f = preset_facts("andromeda")
    big = ctx.details["points"][-1]
    assert big["tokens"] == 200_000
    assert big["memory_floor_bytes"] == f.params * 2 + 200_000 * 2560 * 2 + 2 * 200_000 * 128 * 2
    assert forward_memory_floor(f, 1, 200_000, 2) == big["memory_floor_bytes"]
    assert "extrapolation" in ctx.reason
    for r in result.results:
        if r.kind == "latency":
            assert r.verdict == "impossible"


def test_claims_file_errors(tmp_path):
    bad = tmp_path / "c.yml"
    bad.write_text("claims:\n  - {id: a, text: t, kind: latency, tokens: 10, max_ms: 1, speed: 3}\n")
    with pytest.raises(ConfigError, match=r"claims\.0\.speed"):
        load_claims(bad)
    bad.write_text("claims:\n  - {id: a, text: t, kind: memory, reference: nope, factor: 2}\n")
    with pytest.raises(ConfigError, match="reference 'nope'"):
        load_claims(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_claims(tmp_path / "missing.yml")


def test_cli_writes_the_claims_report(tmp_path, capsys):
    out = tmp_path / "claims"
    assert main(["claims", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in data["claims"]}
    assert verdicts == {"prefill_32k": "impossible", "prefill_100k": "impossible", "memory_vs_gpt3": "met",
                        "memory_vs_llama": "partly met", "context_32k_200k": "not measured"}
    md = (out / "claims.md").read_text()
    assert "H100 SXM datasheet" in md and "**impossible**" in md and "| KV cache per token |" in md
    assert all(math.isfinite(c["details"].get("floor_ms", 0.0)) for c in data["claims"])
    assert "[impossible]" in capsys.readouterr().out
    assert main(["claims", "--device", "cpu", "--max-preset", "nope", "--out", str(out)]) == 2


def test_measured_path_runs_on_a_tiny_model(monkeypatch):
    """The GPU code path (measure, search, verdict), exercised on the CPU with the tiny preset."""
    import torch

    from andromeda.verdicts import claims as mod
    from andromeda.verdicts.claims import check_context, measure_matmul_tflops
    from andromeda.verdicts.claims_file import ContextClaim

    monkeypatch.setattr(mod, "MEASURE_TIMING", dict(warmup=0, min_runs=3, max_runs=3, target_rel_ci=None))
    dev = torch.device("cpu")
    assert 0 < measure_matmul_tflops(dev, n=64, dtype=torch.float32) < 1e4
    basis = Basis("cpu", 1e6, "given", 80e9, True)
    easy = LatencyClaim(id="x", text="x", kind="latency", preset="tiny", tokens=64, max_ms=10_000.0)
    r = check_latency(easy, basis, presets_by_size("tiny"), 0.5, dev)
    assert r.verdict == "met" and r.details["largest_preset_measured"] == "tiny"
    m = r.details["measurements"][0]
    assert m["status"] == "ok" and 0 < m["median_ms"] < 10_000 and len(m["samples_ms"]) >= 3
    hard = LatencyClaim(id="y", text="y", kind="latency", preset="tiny", tokens=64, max_ms=1e-6)
    assert check_latency(hard, basis, presets_by_size("tiny"), 0.5, dev).verdict == "not met"
    ctx = ContextClaim(id="z", text="z", kind="context", preset="tiny", min_tokens=32, max_tokens=320)
    r = check_context(ctx, basis, dev)
    assert r.verdict == "met" and [m["status"] for m in r.details["measurements"]] == ["ok", "ok"]
    assert "extrapolation" in r.reason  # 320 > the tiny preset's max_seq_len of 256
