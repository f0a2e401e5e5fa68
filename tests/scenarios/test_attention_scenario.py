"""The attention scenario: implementations against float64, patterns against their definitions, counts
against direct counts, and the attention-quick preset end to end (runner -> report charts).

References here are written from the definitions in docs/attention.md, independently of the code:
masks with numpy, attention in float64 from the formula, block-sparse attention by visiting only the
blocks a FlexAttention BlockMask lists.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from andromeda.errors import ConfigError
from andromeda.measure.timing import TimingConfig
from andromeda.model import backends
from andromeda.model.backends import AttentionSpec
from andromeda.model.positional import alibi_slopes
from andromeda.records import RecordStore
from andromeda.runs.context import Case, RunContext
from andromeda.runs.manifest import load_manifest, validate
from andromeda.runs.runner import run
from andromeda.scenarios import get as get_scenario
from andromeda.scenarios.attention.impls import Problem, check_kernels, prepare, unsupported
from andromeda.scenarios.attention.sparsity import PATTERNS, PatternSpec, get_pattern

CPU = torch.device("cpu")
CPU_IMPLS = ("eager", "sdpa_flash", "sdpa_math", "flex")  # the implementations a CPU runs
SPARSE_IMPLS = ("eager", "sdpa_math", "flex")  # ... of which these take a sparse pattern
BACKWARD_IMPLS = ("eager", "sdpa_flash", "sdpa_math")  # FlexAttention has no CPU backward
HEADS = {"MHA": (4, 4), "GQA": (4, 2), "MQA": (4, 1)}
LAYOUT = ((1, 0, 0, 0), (1, 1, 0, 0), (0, 1, 1, 0), (1, 0, 1, 1))
KNOBS = dict(window=12, dilation=3, global_tokens=5, random_blocks=2, block_size=16, layout=LAYOUT)
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}  # max |out - ref| / max |ref|


def spec_of(name: str, causal: bool, **kw) -> PatternSpec:
    return PatternSpec(name=name, causal=causal, **{**KNOBS, **kw})


# ---- independent definitions -------------------------------------------------------------------
def mask_from_definition(spec: PatternSpec, n: int, random_table: np.ndarray | None) -> np.ndarray:
    """(N, N) bool from the definitions in docs/attention.md, with numpy."""
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    d, bs = q - k, spec.block_size
    if spec.name == "dense":
        keep = np.ones((n, n), dtype=bool)
    elif spec.name == "sliding_window":
        keep = np.abs(d) < spec.window
    elif spec.name == "dilated":
        keep = (np.abs(d) < spec.window * spec.dilation) & (d % spec.dilation == 0)
    elif spec.name == "bigbird":
        radius = max(1, spec.window // bs)
        keep = (np.abs(q // bs - k // bs) <= radius) | (k < spec.global_tokens) | (q < spec.global_tokens)
        keep |= random_table[q // bs, k // bs]
    else:
        lay = np.array(spec.layout, dtype=bool)
        cells = len(lay)
        keep = lay[(q * cells) // n, (k * cells) // n]
    return keep & (d >= 0) if spec.causal else keep


def reference(q, k, v, keep, slopes=None) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(D) - slope |i - j|, masked) v; K/V repeated per group."""
    h, hkv, n, dh = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    kd = k.double().repeat_interleave(h // hkv, 1)
    vd = v.double().repeat_interleave(h // hkv, 1)
    s = q.double() @ kd.transpose(-1, -2) / math.sqrt(dh)
    if slopes is not None:
        i = torch.arange(n)
        s = s - torch.as_tensor(slopes, dtype=torch.float64)[:, None, None] * (i[:, None] - i[None, :]).abs()
    s = s.masked_fill(~torch.as_tensor(keep), -math.inf)
    return s.softmax(-1) @ vd


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def problem(spec, n, heads=(4, 2), dtype=torch.float32, alibi=False, backward=False, **kw) -> Problem:
    return Problem(batch=2, heads=heads[0], kv_heads=heads[1], head_dim=16, n=n, dtype=dtype, pattern=spec,
                   alibi=alibi, backward=backward, **kw)


def inputs(prob: Problem, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(prob.batch, prob.heads, prob.n, prob.head_dim, generator=g)
    k = torch.randn(prob.batch, prob.kv_heads, prob.n, prob.head_dim, generator=g)
    v = torch.randn(prob.batch, prob.kv_heads, prob.n, prob.head_dim, generator=g)
    return q.to(prob.dtype), k.to(prob.dtype), v.to(prob.dtype)


def block_sparse_attention(q, k, v, block_mask, mask_mod) -> torch.Tensor:
    """float64 attention visiting only the blocks a BlockMask lists, the way a block-sparse kernel does:
    partial blocks through mask_mod, full blocks unmasked, unlisted blocks never."""
    b, h, n, dh = q.shape
    bs = block_mask.BLOCK_SIZE[0]
    kd = k.double().repeat_interleave(h // k.shape[1], 1)
    vd = v.double().repeat_interleave(h // k.shape[1], 1)
    out = torch.zeros(b, h, n, dh, dtype=torch.float64)
    parts = [(block_mask.kv_num_blocks, block_mask.kv_indices, True),
             (block_mask.full_kv_num_blocks, block_mask.full_kv_indices, False)]
    for r in range(-(-n // bs)):
        rows = torch.arange(r * bs, min((r + 1) * bs, n))
        cols, masked = [], []
        for num, idx, is_partial in parts:
            for c in idx[0, 0, r, : int(num[0, 0, r])].tolist():
                block_cols = torch.arange(c * bs, min((c + 1) * bs, n))
                cols.append(block_cols)
                keep = torch.ones(len(rows), len(block_cols), dtype=torch.bool)
                if is_partial:
                    keep = mask_mod(0, 0, rows[:, None], block_cols[None, :])
                masked.append(keep)
        cols_t, keep_t = torch.cat(cols), torch.cat(masked, dim=1)
        s = q[:, :, rows].double() @ kd[:, :, cols_t].transpose(-1, -2) / math.sqrt(dh)
        out[:, :, rows] = s.masked_fill(~keep_t, -math.inf).softmax(-1) @ vd[:, :, cols_t]
    return out


# ---- the quick preset, end to end (first: the runner's per-case gc.collect is cheapest on a small heap)
CHARTS = ("latency_vs_seq_len", "memory_vs_seq_len", "tflops_vs_seq_len", "sparsity_vs_speedup")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "run"
    result = run(load_manifest(preset="attention-quick"), out)
    return out, result


def test_quick_preset_runs_and_reports_every_chart(quick_run):
    out, result = quick_run
    records = RecordStore(out / "results.jsonl").read()
    assert len(records) == result.total and result.counts.get("error", 0) == result.counts.get("oom", 0) == 0
    ok = [r for r in records if r.status == "ok"]
    assert {r.params["impl"] for r in ok} - {"triton"} == set(CPU_IMPLS)  # triton: under TRITON_INTERPRET=1
    assert {r.params["pattern"] for r in ok} == set(PATTERNS)
    assert all(r.message for r in records if r.status == "skipped")
    assert all(r.metrics["max_rel_err"] < TOL[torch.float32] for r in ok)
    from andromeda.report import build_report  # imported here: a smaller heap makes the runner's gc faster

    written = build_report(out, ["png", "md", "csv"])
    names = {p.name for p in written["png"]}
    for chart in CHARTS:
        assert f"attention_{chart}.png" in names
        assert (out / "charts" / f"attention_{chart}.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "max abs err" in md and "max rel err" in md and "dq max rel err" in md  # the accuracy table
    assert "sparsity" in md and "TFLOP/s" in md


# ---- patterns: masks, counts, block masks ------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("n", [96, 100])
def test_pattern_counts_match_a_direct_count(name, causal, n):
    spec = spec_of(name, causal)
    pat = get_pattern(spec, n, CPU)
    table = pat.random_table.numpy() if pat.random_table is not None else None
    keep = mask_from_definition(spec, n, table)
    assert np.array_equal(pat.dense_mask().numpy(), keep)

    pairs = int(keep.sum())
    dense_pairs = n * (n + 1) // 2 if causal else n * n
    assert pat.pairs == pairs
    assert pat.sparsity == pytest.approx(1 - pairs / dense_pairs, abs=1e-12)
    bs, nb = spec.block_size, -(-n // spec.block_size)
    padded = np.zeros((nb * bs, nb * bs), dtype=bool)
    padded[:n, :n] = keep
    per_block = padded.reshape(nb, bs, nb, bs).sum(axis=(1, 3))  # (nb, nb)
    dense_blocks = nb * (nb + 1) // 2 if causal else nb * nb
    assert pat.blocks_computed == int((per_block > 0).sum())
    assert pat.block_sparsity == pytest.approx(1 - (per_block > 0).sum() / dense_blocks, abs=1e-12)
    # full blocks need no mask; every kept pair lies in a listed block (checked by rebuilding the mask)
    bm = pat.block_mask()
    implied = np.zeros((nb * bs, nb * bs), dtype=bool)
    for num, idx, full in [(bm.kv_num_blocks, bm.kv_indices, False), (bm.full_kv_num_blocks, bm.full_kv_indices, True)]:
        for r in range(nb):
            for c in idx[0, 0, r, : int(num[0, 0, r])].tolist():
                block = np.s_[r * bs:(r + 1) * bs, c * bs:(c + 1) * bs]
                implied[block] = True if full else padded[block]
                if full:
                    assert padded[block].all(), f"block ({r}, {c}) marked full holds masked pairs"
    assert np.array_equal(implied[:n, :n], keep)


@pytest.mark.parametrize("causal", [True, False])
def test_bigbird_random_blocks_are_drawn_outside_the_local_band(causal):
    spec = spec_of("bigbird", causal, random_blocks=3)
    pat = get_pattern(spec, 256, CPU)
    table = pat.random_table.numpy()
    nb, radius = table.shape[0], max(1, spec.window // spec.block_size)
    for qb in range(nb):
        cand = [kb for kb in range(nb) if abs(qb - kb) > radius and (kb <= qb or not causal)]
        chosen = np.flatnonzero(table[qb]).tolist()
        assert set(chosen) <= set(cand)
        assert len(chosen) == min(3, len(cand))


# ---- implementations vs float64 ---------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", PATTERNS)
def test_every_cpu_impl_matches_float64_reference(name, causal):
    """Every pattern, causal and not, MHA/GQA/MQA, each with and without ALiBi; FlexAttention (whose CPU
    path traces once per mask, score function and shape, ~0.5 s each) takes ALiBi with GQA only."""
    n = 64
    spec = spec_of(name, causal)
    pat = get_pattern(spec, n, CPU)
    keep = mask_from_definition(spec, n, pat.random_table.numpy() if pat.random_table is not None else None)
    for label, heads in HEADS.items():
        for alibi in (False, True):
            prob = problem(spec, n, heads, alibi=alibi)
            q, k, v = inputs(prob)
            ref = reference(q, k, v, keep, alibi_slopes(heads[0]) if alibi else None)
            for impl in CPU_IMPLS if name == "dense" else SPARSE_IMPLS:
                if impl == "flex" and alibi and label != "GQA":
                    continue
                assert unsupported(impl, prob, CPU) is None, impl
                with torch.no_grad():
                    out = prepare(impl, prob, pat, CPU).probe(q, k, v)
                assert out.shape == ref.shape and out.dtype == q.dtype
                err = rel_err(out, ref)
                assert err < TOL[torch.float32], f"{impl} {name} causal={causal} {label} alibi={alibi}: {err:.2e}"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", PATTERNS)
def test_gradients_match_float64_reference(name, causal):
    n = 48
    spec = spec_of(name, causal, block_size=16, window=8)
    pat = get_pattern(spec, n, CPU)
    keep = mask_from_definition(spec, n, pat.random_table.numpy() if pat.random_table is not None else None)
    for label, heads in HEADS.items():
        alibi = label != "GQA"  # ALiBi with MHA and MQA, none with GQA: both paths, fewer cases
        prob = problem(spec, n, heads, alibi=alibi, backward=True)
        q, k, v = inputs(prob)
        dout = torch.randn(prob.batch, prob.heads, n, prob.head_dim, generator=torch.Generator().manual_seed(1))
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        reference(*leaves, keep, alibi_slopes(heads[0]) if alibi else None).backward(dout.double())
        for impl in BACKWARD_IMPLS if name == "dense" else ("eager", "sdpa_math"):
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            prepare(impl, prob, pat, CPU).probe(qg, kg, vg).backward(dout)
            for what, got, want in zip("qkv", (qg.grad, kg.grad, vg.grad), leaves, strict=True):
                err = rel_err(got, want.grad)
                assert err < 5e-5, f"{impl} d{what} {name} causal={causal} {label}: {err:.2e}"


@pytest.mark.parametrize("impl", SPARSE_IMPLS)
def test_bfloat16_within_tolerance(impl):
    spec = spec_of("sliding_window", True)
    pat = get_pattern(spec, 64, CPU)
    prob = problem(spec, 64, (4, 1), dtype=torch.bfloat16, alibi=True)
    q, k, v = inputs(prob)
    with torch.no_grad():
        out = prepare(impl, prob, pat, CPU).probe(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, reference(q, k, v, pat.dense_mask(), alibi_slopes(4))) < TOL[torch.bfloat16]


@pytest.mark.parametrize("name", [p for p in PATTERNS if p != "dense"])
def test_sparse_output_equals_dense_boolean_mask(name):
    """The FlexAttention path (a BlockMask from block indices) computes what SDPA computes with the
    equivalent dense boolean mask; so does attention that visits only the blocks the BlockMask lists."""
    n = 100
    spec = spec_of(name, True)
    pat = get_pattern(spec, n, CPU)
    prob = problem(spec, n, (4, 2))
    q, k, v = inputs(prob)
    keep = torch.as_tensor(mask_from_definition(spec, n, pat.random_table.numpy() if pat.random_table is not None
                                                else None))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    with torch.no_grad():
        flex = prepare("flex", prob, pat, CPU).probe(q, k, v)
    assert (flex - dense).abs().max().item() < 1e-5
    visited = block_sparse_attention(q, k, v, pat.block_mask(), pat.mask_mod)
    assert (visited - dense.double()).abs().max().item() < 1e-5


# ---- the scenario: records, FLOPs, skips -------------------------------------------------------
def _ctx(params) -> RunContext:
    ctx = RunContext(device=CPU, dtype=torch.float32, env={},
                     timing=TimingConfig(warmup=1, min_runs=2, max_runs=3, budget_s=0.01, target_rel_ci=None))
    ctx.case = Case(case_id="t", source="andromeda:tiny", scenario="attention", params=params)
    return ctx


def run_points(**cfg):
    scenario = get_scenario("attention")
    config = scenario.Config.model_validate({"scenario": "attention", "heads": 4, "kv_heads": 2, "head_dim": 16,
                                             **{k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                                {**KNOBS, **cfg}.items()}})
    recs = []
    for p in config.points():
        recs += scenario.run(None, p, _ctx(p))
    return recs


def test_flops_and_sparsity_match_direct_counts():
    recs = run_points(impl=["eager", "sdpa_math"], pattern=list(PATTERNS), seq_len=[64], causal=[True, False],
                      batch=2, **{"pass": ["forward", "fwd_bwd"]})
    ok = [r for r in recs if r.status == "ok"]
    assert len(ok) == len(recs) == 5 * 2 * 2 * 2
    for r in ok:
        p = r.params
        spec = spec_of(p["pattern"], p["causal"])
        pat = get_pattern(spec, 64, CPU)
        keep = mask_from_definition(spec, 64, pat.random_table.numpy() if pat.random_table is not None else None)
        pairs = int(keep.sum())
        forward = 4 * p["batch"] * p["heads"] * pairs * p["head_dim"]
        assert r.metrics["pairs"] == pairs
        # eager and SDPA's math kernel save the probabilities: backward = 2x forward (dP, dV, dQ, dK)
        assert r.metrics["flops"] == (forward * 3 if p["pass"] == "fwd_bwd" else forward)
        dense = 4 * p["batch"] * p["heads"] * (64 * 65 // 2 if p["causal"] else 64 * 64) * p["head_dim"]
        assert r.metrics["dense_flops"] == (dense * 3 if p["pass"] == "fwd_bwd" else dense)
        assert r.metrics["effective_tflops"] == pytest.approx(r.metrics["dense_flops"] / (r.metrics["latency_ms"] / 1e3)
                                                              / 1e12)
        assert r.metrics["tflops"] == pytest.approx(r.metrics["flops"] / (r.metrics["latency_ms"] / 1e3) / 1e12)
        assert r.metrics["sparsity"] == pytest.approx(1 - pairs / (64 * 65 // 2 if p["causal"] else 64 * 64))
        assert r.metrics["max_rel_err"] < TOL[torch.float32]
        if p["pass"] == "fwd_bwd":
            assert all(r.metrics[f"d{x}_max_rel_err"] < 1e-4 for x in "qkv")
        assert r.info["kernels"] == [p["impl"]] and r.info["reference"] == "float64, every query row"
        assert r.metrics["peak_mib"] > 0 and r.metrics["latency_ms"] > 0


@pytest.mark.parametrize("impl,passes", [
    ("eager", 1 + 2.0),  # forward kept P: backward is dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    ("sdpa_math", 1 + 2.0),
    ("sdpa_flash", 1 + 2.5),  # fused CPU flash kernel: backward computes S = Q K^T again, then the four
])
def test_backward_flops_follow_the_kernel(impl, passes):
    b, h, d, n = 2, 4, 16, 32  # run_points: 4 query heads on 2 K/V heads; every query head computes its pairs
    (rec,) = run_points(impl=[impl], pattern=["dense"], seq_len=[n], causal=[True], batch=b, **{"pass": ["fwd_bwd"]})
    assert rec.status == "ok", rec.message
    pairs = n * (n + 1) // 2  # causal: query i sees keys 0..i
    matmul = 2 * b * h * pairs * d  # one (query, key)-pair matmul: scores, or P V
    # forward: 2 matmuls; recomputing backward: 5 (S again, dP, dV, dQ, dK); saving backward: 4
    expected = matmul * (2 + (5 if passes == 3.5 else 4))
    assert rec.metrics["flops"] == expected == 4 * b * h * pairs * d * passes
    assert rec.metrics["dense_flops"] == expected  # the dense causal pattern: nothing skipped
    assert ("recomputes" if passes == 3.5 else "saves") in rec.info["backward_flops"]


def test_cpu_peak_memory_is_tensor_allocations_not_rss():
    b, h, hkv, d = 2, 4, 2, 16
    recs = {}
    for n in (64, 256):
        (rec,) = run_points(impl=["eager"], pattern=["dense"], seq_len=[n], causal=[True], batch=b,
                            **{"pass": ["forward"]})
        recs[n] = rec
        inputs = 4 * (b * h * n * d + 2 * b * hkv * n * d) / 2**20  # q, k, v in float32
        scores = 4 * b * h * n * n / 2**20  # eager materializes the (B, H, N, N) scores
        assert rec.metrics["added_peak_mib"] >= scores
        assert rec.metrics["peak_mib"] == pytest.approx(inputs + rec.metrics["added_peak_mib"])
        assert rec.metrics["peak_mib"] < rec.metrics["rss_peak_mib"] / 10  # RSS holds torch and the interpreter
        assert "not process RSS" in rec.info["peak_mib"]
    assert recs[256].metrics["added_peak_mib"] > 4 * recs[64].metrics["added_peak_mib"]  # scores grow as N^2


def test_reference_on_a_subset_of_rows():
    (rec,) = run_points(impl=["sdpa_math"], pattern=["sliding_window"], seq_len=[128], ref_rows=9,
                        **{"pass": ["fwd_bwd"]})
    assert rec.status == "ok", rec.message
    assert "9 of 128 query rows" in rec.info["reference"]
    assert rec.metrics["max_rel_err"] < 1e-5 and rec.metrics["dk_max_rel_err"] < 1e-4


def test_unsupported_combinations_are_skipped_with_a_reason():
    recs = run_points(impl=["sdpa_efficient", "sdpa_cudnn", "sdpa_flash", "triton", "flash_attn", "xformers", "flex",
                            "eager"], pattern=["dense", "dilated"], seq_len=[64], dense_mask_max_len=32,
                      **{"pass": ["fwd_bwd"]})
    why = {(r.params["impl"], r.params["pattern"]): r.message for r in recs if r.status == "skipped"}
    assert "no EFFICIENT_ATTENTION kernel" in why[("sdpa_efficient", "dense")]
    assert "no CUDNN_ATTENTION kernel" in why[("sdpa_cudnn", "dense")]
    assert "cannot express the dilated pattern" in why[("sdpa_flash", "dilated")]
    if "triton" in backends.names():  # registered: its own reason (no CUDA here), unless it can run
        spec = AttentionSpec(4, 2, 16, causal=True, dtype=torch.float32)
        assert backends.get("triton").supports(spec, CPU) in (why.get(("triton", "dense")), None)
    else:
        assert "no 'triton' backend" in why[("triton", "dense")]
    assert "CUDA" in why[("flash_attn", "dense")] or "not installed" in why[("flash_attn", "dense")]
    assert "CUDA" in why[("xformers", "dense")] or "not installed" in why[("xformers", "dense")]
    assert "no CPU backward" in why[("flex", "dense")]
    assert "dense_mask_max_len" in why[("eager", "dilated")]  # 64 > 32: no dense mask
    ok = {(r.params["impl"], r.params["pattern"]) for r in recs if r.status == "ok"}
    assert ok - {("triton", "dense")} == {("sdpa_flash", "dense"), ("eager", "dense")}
    (short,) = run_points(impl=["flex"], pattern=["block_sparse"], seq_len=[3])
    assert short.status == "skipped" and "shorter than the layout" in short.message


def test_kernel_check_reads_profiler_names():
    assert check_kernels("sdpa_flash", ["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>"]) is None
    assert check_kernels("sdpa_efficient", ["fmha_cutlassF_bf16_aligned_64x128_rf_sm80"]) is None
    assert check_kernels("flex", ["triton_tem_fused_0", "triton_poi_fused_1"]) is None
    assert "no kernel named like flash" in check_kernels("sdpa_flash", ["fmha_cutlassF_f32_aligned_64x64_rf_sm80"])
    assert "fused attention kernel" in check_kernels("sdpa_math", ["sm90_xmma_gemm", "pytorch_flash::flash_fwd"])
    assert check_kernels("eager", ["sm90_xmma_gemm_bf16", "cunn_SoftMaxForward"]) is None
    assert check_kernels("eager", []) == "the profiler saw no CUDA kernel"
    assert check_kernels("triton", ["flash_fwd", "flash_bwd_dkdv", "flash_bwd_dq"]) is None  # ours
    assert "no kernel named like flash_fwd" in check_kernels("triton", ["triton_poi_fused_1"])


@pytest.mark.parametrize("bad, match", [
    ({"kv_heads": 3}, "must divide heads"),
    ({"pattern": ["block_sparse"], "layout": None}, "needs a layout"),
    ({"pattern": ["block_sparse"], "layout": [[0, 1], [1, 1]]}, "row 0"),
    ({"pattern": ["block_sparse"], "layout": [[1, 0], [1]]}, "square"),
    ({"impl": ["cudnn-magic"]}, "impl"),
])
def test_config_errors_name_the_field(bad, match):
    entry = {"scenario": "attention", "heads": 4, "kv_heads": 2, **bad}
    with pytest.raises(ConfigError, match=match):
        validate({"models": ["andromeda:tiny"], "scenarios": [entry]})


def test_cli_profile_runs_the_preset(monkeypatch, tmp_path):
    import andromeda.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["profile", "attention", "--full", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert seen["preset"] == "attention-full" and seen["device"] == "cpu" and seen["out"] == str(tmp_path)
    assert cli.main(["profile", "attention"]) == 0 and seen["preset"] == "attention-quick"
    assert load_manifest(preset="attention-full").scenarios[0].pass_ == ["forward", "fwd_bwd"]


def test_saved_manifest_writes_pass_as_users_do_and_reloads(tmp_path):
    import yaml

    from andromeda.runs.manifest import load_manifest, validate
    from andromeda.runs.plan import plan

    m = validate({"models": ["andromeda:tiny"], "device": "cpu",
                  "scenarios": [{"scenario": "attention", "pass": ["forward", "fwd_bwd"], "seq_len": [64]}]})
    dumped = m.model_dump(mode="json", by_alias=True)  # what the runner writes to manifest.yml
    assert dumped["scenarios"][0]["pass"] == ["forward", "fwd_bwd"] and "pass_" not in dumped["scenarios"][0]
    (tmp_path / "manifest.yml").write_text(yaml.safe_dump(dumped, sort_keys=False))
    again = load_manifest(tmp_path / "manifest.yml")
    assert [c.case_id for c in plan(again)] == [c.case_id for c in plan(m)]
