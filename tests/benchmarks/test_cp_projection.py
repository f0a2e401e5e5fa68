"""benchmarks/cp_projection.py --smoke on the CPU: the projected context-parallel prefill's rows, its communication
model against a count made here from the config (as context_parallel._Shards gathers), and the chunked runs through
the rewound cache against the single forward."""

import json

import pytest
import torch
from bench_scripts import load

from andromeda.model import from_name
from andromeda.model.backends import registry
from andromeda.model.context_parallel import layout


def test_smoke_rows_comm_model_and_check(tmp_path):
    cpp = load("cp_projection")
    out = tmp_path / "cpp.json"
    alpha_us, busbw_gbs = 15.0, 200.0
    assert cpp.main(["--smoke", "--json", str(out), "--lengths", "96", "256", "--alpha-us", str(alpha_us),
                     "--busbw-gbs", str(busbw_gbs)]) == 0
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "floors", "env", "args", "assumptions", "model", "rows"} <= set(res)
    assert res["assumptions"]["alpha_us"] == alpha_us and res["assumptions"]["busbw_gbs"] == busbw_gbs
    rows = res["rows"]
    assert [(r["n"], r["world"]) for r in rows] == [(n, w) for n in (96, 256) for w in (1, 2, 4, 8)]

    cfg = from_name("tiny")  # dim 64, depth 2, one KV head of 16, one shift token, pre-norm: 2 shift sites a layer
    backend = registry.select(registry.AttentionSpec.from_model(cfg, torch.float32), torch.device("cpu"),
                              cfg.attn_backend)
    norms = bool(cfg.rotary_xpos and cfg.n_alibi_heads and getattr(backend, "score_norms", False))
    assert not norms and res["model"]["key_norms_gathered"] is False  # the eager CPU backend takes no key norms
    sites = 2
    for r in rows:
        n, w = r["n"], r["world"]
        assert r["rank_chunks"] == [[list(c) for c in p] for p in layout(n, w, cfg.shift_tokens)]
        assert len(r["rank_chunk_ms"]) == len(r["rank_compute_ms"]) == w
        assert all(len(c) == 2 and min(c) > 0 for c in r["rank_chunk_ms"])  # every rank runs two chunks
        assert all(len(runs) == 2 for rank in r["rank_chunk_ms_runs"] for runs in rank)  # --reps 2 in smoke
        assert r["rank_compute_ms"] == [sum(c) for c in r["rank_chunk_ms"]]
        assert r["compute_ms_max"] == max(r["rank_compute_ms"])
        assert r["balance_max_over_min"] == max(r["rank_compute_ms"]) / min(r["rank_compute_ms"])
        # the model, computed here: per layer and chunk, k and v (float32) + a shift row per site, each one
        # all-gather of W x the longest chunk of that piece; alpha + (W - 1)/W x bytes / busbw each
        count = 0 if w == 1 else 2 * cfg.depth * (2 + norms + sites)
        assert r["collectives_per_rank"] == r["collectives_per_rank_counted"] == count
        nbytes = 0
        for j in (0, 1):
            longest = max(b - a for a, b in (p[j] for p in r["rank_chunks"]))
            nbytes += cfg.depth * w * (2 * longest * cfg.dim_head * 4 + sites * cfg.shift_tokens * cfg.dim * 4)
        want_ms = 0.0 if w == 1 else 1e3 * (count * alpha_us * 1e-6 + (w - 1) / w * nbytes / (busbw_gbs * 1e9))
        assert r["comm_out_bytes_per_rank"] == (0 if w == 1 else nbytes)
        assert abs(r["comm_ms"] - want_ms) < 1e-9
        lockstep = sum(max(c[j] for c in r["rank_chunk_ms"]) for j in (0, 1))
        assert abs(r["projected_ms"] - (lockstep + want_ms)) < 1e-9
        assert abs(r["projected_ms_balanced"] - (r["compute_ms_max"] + want_ms)) < 1e-9
        assert r["projected_ms_balanced"] <= r["projected_ms"] + 1e-9
        assert r["single_device_ms"] > 0
        assert abs(r["scaling_efficiency"] - r["single_device_ms"] / (w * r["projected_ms"])) < 1e-12
        assert r["under_100ms"] == (r["projected_ms"] < 100)
        # the correctness check, on the smallest W > 1 only: float32 chunks through the rewound cache
        if w == 2:
            assert r["check"]["world"] == 2 and r["check"]["hidden_max_abs"] > 0
            assert r["check"]["hidden_max_abs_diff"] < 1e-4
        else:
            assert "check" not in r


def test_graphs_need_a_gpu(tmp_path, capsys):
    assert load("cp_projection").main(["--smoke", "--graphs", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--graphs" in err and len(err.splitlines()) == 1 and not (tmp_path / "x.json").exists()


@pytest.mark.cuda
def test_graphed_chunks_on_cuda(tmp_path):
    """--graphs: every chunk replayed from a CUDA graph, its projection beside the eager one, and the cache left
    as the eager path leaves it (the check after the graphed runs still matches the single forward)."""
    out = tmp_path / "cpp.json"
    assert load("cp_projection").main(["--preset", "tiny", "--graphs", "--lengths", "1024", "--worlds", "1", "2",
                                       "--reps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for r in rows:
        assert "graphed_error" not in r, r["graphed_error"]
        assert [len(c) for c in r["rank_chunk_ms_graphed"]] == [2] * r["world"]
        assert r["projected_ms_graphed"] == pytest.approx(r["lockstep_compute_ms_graphed"] + r["comm_ms"])
    check = rows[1]["check"]
    assert check["hidden_max_abs_diff"] <= 0.05 * check["hidden_max_abs"]
