"""benchmarks/cp_projection.py --smoke on the CPU: the projected context-parallel prefill's rows, its communication
model against counts and bytes worked out here from the config (one all-gather per layer and exchange, both of a
rank's chunks at once, as context_parallel._Shards gathers) and against the all-gathers the real prefill makes,
and the chunked runs through the rewound cache against the single forward."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from bench_scripts import load

from andromeda.model import Andromeda, from_name
from andromeda.model.backends import registry
from andromeda.model.context_parallel import layout, prefill

# tiny preset (dim 64, depth 2, one KV head of 16, one shift token, pre-norm: 2 shift sites a layer), float32,
# batch 1, no key norms (CPU backend), N = 51 over W = 3: layout [(0, 8), (42, 51)], [(8, 17), (34, 42)],
# [(17, 26), (26, 34)], 17 positions on every rank (the old per-piece padding was 9 + 9 = 18).
# count: depth x (k, v + 2 shift sites) = 2 x 4 = 8 all-gathers a rank for the whole prefill.
# bytes a layer: k, v: 2 x W 3 x 17 rows x 16 x 4 B = 6528; shift: 2 sites x 3 x 2 rows x 64 x 4 B = 3072;
# x depth 2 = 19200.
TINY_51_3 = {"collectives": 8, "out_bytes": 19200}


def test_smoke_rows_comm_model_and_check(tmp_path):
    cpp = load("cp_projection")
    out = tmp_path / "cpp.json"
    alpha_us, busbw_gbs = 15.0, 200.0
    assert cpp.main(["--smoke", "--json", str(out), "--lengths", "51", "256", "--worlds", "1", "2", "3", "8",
                     "--alpha-us", str(alpha_us), "--busbw-gbs", str(busbw_gbs)]) == 0
    res = json.loads(out.read_text())
    assert {"git_commit", "device", "versions", "floors", "env", "args", "assumptions", "model", "rows"} <= set(res)
    assert res["assumptions"]["alpha_us"] == alpha_us and res["assumptions"]["busbw_gbs"] == busbw_gbs
    assert res["collectives_per_layer"] == {"kv": 2, "key_norms": 0, "shift": 2}
    rows = res["rows"]
    assert [(r["n"], r["world"]) for r in rows] == [(n, w) for n in (51, 256) for w in (1, 2, 3, 8)]

    cfg = from_name("tiny")
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
        # the model, computed here: per layer one all-gather each of k and v (float32, the most positions a rank
        # holds, both chunks) and one per shift site (2 rows a rank: each chunk's last), W x that each;
        # alpha + (W - 1)/W x bytes / busbw each
        count = 0 if w == 1 else cfg.depth * (2 + norms + sites)
        assert r["collectives_per_rank"] == r["collectives_per_rank_counted"] == count
        held = max(sum(b - a for a, b in p) for p in r["rank_chunks"])
        nbytes = cfg.depth * w * (2 * held * cfg.n_kv_heads * cfg.dim_head * 4
                                  + sites * 2 * cfg.shift_tokens * cfg.dim * 4)
        want_ms = 0.0 if w == 1 else 1e3 * (count * alpha_us * 1e-6 + (w - 1) / w * nbytes / (busbw_gbs * 1e9))
        assert r["comm_out_bytes_per_rank"] == (0 if w == 1 else nbytes)
        assert abs(r["comm_ms"] - want_ms) < 1e-9
        if (n, w) == (51, 3):  # the numbers worked out by hand above
            assert r["collectives_per_rank"] == TINY_51_3["collectives"]
            assert r["comm_out_bytes_per_rank"] == TINY_51_3["out_bytes"]
            assert r["comm_ms"] == pytest.approx(1e3 * (8 * 15e-6 + 2 / 3 * 19200 / 200e9), rel=1e-12)
        # the projection: the slowest rank's two chunks + communication (one call a block: no lockstep per chunk)
        assert abs(r["projected_ms"] - (max(sum(c) for c in r["rank_chunk_ms"]) + want_ms)) < 1e-9
        lockstep = sum(max(c[j] for c in r["rank_chunk_ms"]) for j in (0, 1))  # the old implementation's, recorded
        assert abs(r["lockstep_compute_ms"] - lockstep) < 1e-9
        assert not any(k.endswith("_balanced") for k in r)
        assert r["single_device_ms"] > 0
        assert abs(r["scaling_efficiency"] - r["single_device_ms"] / (w * r["projected_ms"])) < 1e-12
        assert r["under_100ms"] == (r["projected_ms"] < 100)
        # the correctness check, on the smallest W > 1 only: float32 chunks through the rewound cache
        if w == 2:
            assert r["check"]["world"] == 2 and r["check"]["hidden_max_abs"] > 0
            assert r["check"]["hidden_max_abs_diff"] < 1e-4
        else:
            assert "check" not in r


def test_comm_model_by_hand_with_key_norms_and_a_parallel_block():
    """Two ranks holding 4 + 2 and 2 + 4 positions: rows 6 (the old per-piece padding was 4 + 4)."""
    cfg = SimpleNamespace(depth=3, n_kv_heads=2, dim_head=8, dim=32, shift_tokens=2, parallel_block=True)
    pieces = [[(0, 4), (10, 12)], [(4, 6), (6, 10)]]
    got = load("cp_projection").comm_model(cfg, pieces, batch=2, elt=2, key_norms=True, alpha_s=10e-6,
                                           busbw=100e9)
    # count: 3 layers x (k, v, norms, 1 shift site) = 12
    # a layer: k, v 2 x W 2 x 6 rows x B 2 x H_kv 2 x 8 x 2 B = 1536; norms 2 x 6 x 2 x 2 x 4 B = 192;
    # shift 2 x (2 chunks x 2 rows) x 2 x 32 x 2 B = 1024; 2752 a layer, 8256 in all
    # ms: 1e3 x (12 x 10 us + 1/2 x 8256 B / 100 GB/s) = 0.12004128
    assert got["collectives"] == 12 and got["out_bytes"] == 8256
    assert got["ms"] == pytest.approx(0.12004128, rel=1e-12)
    assert load("cp_projection").comm_model(cfg, pieces[:1], 2, 2, True, 10e-6, 100e9)["collectives"] == 0


def test_comm_model_matches_the_prefills_all_gathers(monkeypatch):
    """The real context-parallel prefill, each rank of W = 3 in turn in this process (all_gather replaced by
    copies of this rank's tensor: shapes as with three ranks), makes the all-gathers worked out above."""
    torch.manual_seed(0)
    model = Andromeda(from_name("tiny", max_seq_len=51)).eval()
    tokens = torch.randint(0, model.cfg.num_tokens, (1, 51), generator=torch.Generator().manual_seed(0))
    for rank in range(3):
        out_bytes = []

        def gather(out, t, group=None, log=out_bytes):
            log.append(sum(o.nbytes for o in out))
            for o in out:
                o.copy_(t)

        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
        monkeypatch.setattr(dist, "all_gather", gather)
        prefill(model, tokens, logits="none")
        assert len(out_bytes) == TINY_51_3["collectives"] and sum(out_bytes) == TINY_51_3["out_bytes"]
    pieces = layout(51, 3, model.cfg.shift_tokens)
    got = load("cp_projection").comm_model(model.cfg, pieces, 1, 4, False, 0.0, 1.0)
    assert (got["collectives"], got["out_bytes"]) == (TINY_51_3["collectives"], TINY_51_3["out_bytes"])


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
        assert r["projected_ms_graphed"] == pytest.approx(max(map(sum, r["rank_chunk_ms_graphed"])) + r["comm_ms"])
    check = rows[1]["check"]
    assert check["hidden_max_abs_diff"] <= 0.05 * check["hidden_max_abs"]
