"""Quantized KV caches in the generation and memory scenarios: measured bytes against the formula."""

import pytest

from andromeda.measure.facts import facts_from_config, kv_cache_bytes_per_token, quantized_kv_bytes_per_token
from andromeda.model import from_name
from andromeda.records import RecordStore
from andromeda.runs.manifest import validate
from andromeda.runs.runner import run


def test_quantized_bytes_formula_by_hand():
    f = facts_from_config(from_name("tiny"))
    # int8: one byte a feature + a float32 scale per 32 features; K and V, every layer and KV head
    per_head = f.head_dim * 1 + 4 * f.head_dim / min(32, f.head_dim)
    assert quantized_kv_bytes_per_token(f, 8, 32) == 2 * f.layers * f.kv_heads * per_head
    assert quantized_kv_bytes_per_token(f, 4, 32) == 2 * f.layers * f.kv_heads * (f.head_dim / 2 + 4 * f.head_dim
                                                                                    / min(32, f.head_dim))
    assert kv_cache_bytes_per_token(f, 2) == 2 * f.layers * f.kv_heads * f.head_dim * 2


def test_memory_and_generation_sweep_the_cache_kind(tmp_path):
    pytest.importorskip("transformers")
    m = validate({
        "models": ["andromeda:tiny", "hf:matched:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
        "timing": {"warmup": 1, "min_runs": 2, "max_runs": 3, "budget_s": 0.1},
        "scenarios": [
            {"scenario": "memory", "seq_len": [64], "cache": ["full", "int8", "int4"], "cache_group_size": 16},
            {"scenario": "generation", "prompt_len": [16], "gen_len": [4], "runs": 2,
             "cache": ["full", "int8", "int4"], "cache_group_size": 16},
        ]})
    run(m, tmp_path / "run")
    recs = RecordStore(tmp_path / "run" / "results.jsonl").read()
    facts = facts_from_config(from_name("tiny"))
    by = {(r.source, r.scenario, r.params["cache"]): r for r in recs}
    full = by[("andromeda:tiny", "memory", "full")].metrics
    assert full["kv_bytes_per_token_measured"] == full["kv_bytes_per_token_analytic"] == \
        kv_cache_bytes_per_token(facts, 4)  # float32 run
    for kind, bits in (("int8", 8), ("int4", 4)):
        mem = by[("andromeda:tiny", "memory", kind)]
        assert mem.status == "ok"
        assert mem.metrics["kv_bytes_per_token_measured"] == pytest.approx(
            quantized_kv_bytes_per_token(facts, bits, 16), rel=1e-12)
        gen = by[("andromeda:tiny", "generation", kind)]
        assert gen.status == "ok" and gen.metrics["decode_tokens_per_s"] > 0
        assert len(gen.samples["tpot_ms"]) == 2 * 3  # runs x (gen_len - 1) raw step times
        # the cache the decode held: 16 + 4 positions at the quantized size
        assert gen.metrics["kv_cache_mib"] * 2**20 == pytest.approx(
            (16 + 3) * quantized_kv_bytes_per_token(facts, bits, 16), rel=1e-12)
        assert by[("hf:matched:tiny", "generation", kind)].status == "skipped"
    assert by[("hf:matched:tiny", "generation", "full")].status == "ok"
