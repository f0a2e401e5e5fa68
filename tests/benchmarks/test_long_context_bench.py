"""benchmarks/long_context.py --smoke on the CPU: prefill (whole and chunked through the cache) and captured
decode of the tiny preset over several xPos anchor blocks; the JSON's rows and their arithmetic."""

import json

from bench_scripts import load

from andromeda.model.backends import tuning_record


def test_smoke_rows_and_arithmetic(tmp_path):
    lc = load("long_context")
    out = tmp_path / "lc.json"
    lc.main(["--smoke", "--json", str(out), "--lengths", "250", "--chunks", "0", "100", "--steps", "6"])
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "floors", "args", "andromeda", "weight_bytes"} <= set(res)
    assert res["env"]["kernel_tuning"] == tuning_record()  # the kernel tuning the run used
    rows = res["andromeda"]
    assert [(r["n"], r["chunk"]) for r in rows] == [(250, 0), (250, 100)]
    d, depth, hkv = 16, 2, 1  # the tiny preset: dim_head 16, 2 layers, one KV head
    for r in rows:
        assert r["prefill_ms"] > 0 and r["decode_ms"] > 0 and r["ttft_ms"] == r["prefill_ms"]
        assert r["prefill_tokens_per_s"] == 250 / (r["prefill_ms"] / 1e3)
        # float32 keys and values for 250 + 6 + 1 slots in every layer, plus the token-shift state
        assert r["kv_cache_bytes"] >= 2 * depth * hkv * (250 + 7) * d * 4
        assert r["kv_filled_bytes_at_n"] == 2 * depth * hkv * 250 * d * 4
        assert r["decode_step_bytes"] > res["weight_bytes"] + r["kv_filled_bytes_at_n"]  # the steps' keys too
        assert r["decode_floor_ms"] is None  # no floors measured on the CPU
        assert r["decode_ms_p10_p90"][0] <= r["decode_ms"] <= r["decode_ms_p10_p90"][1]
