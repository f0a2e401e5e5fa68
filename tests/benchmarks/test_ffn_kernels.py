"""benchmarks/ffn_kernels.py times the model's FFN: its function equals andromeda's FeedForward (GELU, bias) and
a float64 SiLU-gate written from the formula, its FLOP count is the matmuls', and the smoke run writes a row
for every variant."""

import json

import torch
from bench_scripts import load

from andromeda.model import from_name
from andromeda.model.layers import FeedForward


def test_ffn_is_the_models_feed_forward_and_llama_ffn_the_silu_gate():
    fk = load("ffn_kernels")
    cfg = from_name("tiny")
    torch.manual_seed(0)
    ff = FeedForward(cfg).double()
    x = torch.randn(5, cfg.dim, dtype=torch.float64)
    got = fk.ffn(x, ff.w_in.weight, ff.w_in.bias, ff.w_out.weight, ff.w_out.bias, fk._gelu_fn("none"))
    torch.testing.assert_close(got, ff(x), rtol=1e-12, atol=1e-12)
    g, u, d = (torch.randn(7, cfg.dim, dtype=torch.float64), torch.randn(7, cfg.dim, dtype=torch.float64),
               torch.randn(cfg.dim, 7, dtype=torch.float64))
    a, b = x @ g.T, x @ u.T
    ref = (a / (1 + torch.exp(-a)) * b) @ d.T
    torch.testing.assert_close(fk.llama_ffn(x, g, u, d), ref, rtol=1e-12, atol=1e-12)


def test_flops_count_three_passes_of_each_matmul():
    fk = load("ffn_kernels")
    _, flops, nbytes = fk.build("ffn-compiled", 4, 8, 16, "cpu", torch.float32, compile_=False)
    assert flops == 3 * 2 * 4 * 8 * 16 * 2 and nbytes is None
    _, flops, _ = fk.build("llama-ffn", 4, 8, 16, "cpu", torch.float32, compile_=False)
    assert flops == 3 * 2 * 4 * 8 * (16 * fk.LLAMA_HIDDEN // fk.HIDDEN) * 3
    _, flops, nbytes = fk.build("gelu-exact", 4, 8, 16, "cpu", torch.float32, compile_=False)
    assert flops == 0 and nbytes == 5 * 4 * 16 * 4


def test_smoke_run_writes_every_row(tmp_path):
    fk = load("ffn_kernels")
    out = tmp_path / "ffn.json"
    fk.main(["--smoke", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == fk.ROWS
    assert all("error" not in r and r["median_ms"] > 0 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
               for r in rows)
