"""benchmarks/qk_rope_kernel.py times what the model runs: its unfused row is QK-norm, partial rotary and xPos as
written from the formula in float64 here, its byte count is the fused pass's five tensors, and the smoke run
writes every row (the fused ones skipped without CUDA or the interpreter)."""

import json

import torch
from bench_scripts import load


def test_the_ops_row_is_qk_norm_rotary_and_xpos():
    qk = load("qk_rope_kernel")
    q, k, norms, rope = qk._inputs(64, 32, 3, 1, 16, 8, "cpu", torch.float32)
    cos, sin, xpos = rope[0].double(), rope[1].double(), rope[2]
    qo, ko, qn, kn = qk.ops(q, k, norms, rope)
    for x, out, n, m, scale in ((q, qo, qn, norms[0], xpos.scale), (k, ko, kn, norms[1], xpos.inv)):
        x, scale = x.detach().double().transpose(1, 2), scale.double()  # float64 from the formula
        y = x / x.norm(dim=-1, keepdim=True) * m.gain.detach().double()  # (B, H, N, D)
        a, b, rest = y[..., :4], y[..., 4:8], y[..., 8:]
        want = torch.cat([(a * cos[:, :4] - b * sin[:, :4]) * scale[:, :4],
                          (b * cos[:, 4:] + a * sin[:, 4:]) * scale[:, 4:], rest], dim=-1)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(n.double(), y.norm(dim=-1), rtol=1e-5, atol=1e-5)
        assert out.is_contiguous()


def test_bytes_are_five_passes_over_q_and_k():
    qk = load("qk_rope_kernel")
    q, k, norms, rope = qk._inputs(128, 64, 3, 1, 32, 16, "cpu", torch.float32)
    _, nbytes = qk.build("ops-compiled", q, k, norms, rope, compile_=False)
    assert nbytes == 5 * (2 * 64 * 3 * 32 + 2 * 64 * 1 * 32) * 4


def test_smoke_writes_every_row(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qk = load("qk_rope_kernel")
    out = tmp_path / "qk.json"
    qk.main(["--smoke", "--json", str(out), "--tiles", "2048", "--warps", "4"])
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["ops-compiled", "fused", "fused-t2048-w4"]
    assert rows["ops-compiled"]["median_ms"] > 0 and rows["ops-compiled"]["gb_per_s"] > 0
    assert "skipped" in rows["fused"] and "skipped" in rows["fused-t2048-w4"]
