"""QK-norm + partial rotary + xPos of the training step on the GPU: our fused kernel against the compiled PyTorch ops.

Issue 26 (training speed): on an H100 the 2.5B fast step spent ~45 ms a 2K step on QK-norm, rotary and xPos in
eight Inductor kernels, against ~10 ms for the matched Llama's RoPE. `backends/qk_rope.py` does it in one Triton
kernel each way. This script times, forward + backward of q (24 heads) and k (1 head) at the `andromeda` preset's
shape (head dim 128, rotary dim 64, QK-norm gains, xPos, bf16), side by side in one process:

- `ops-compiled`: what the model runs with `TritonTuning.fused_qk` off: the (B, N, H, D) projection viewed as
  (B, H, N, D), QKNorm, `apply_rotary` with the xPos scale, made contiguous for the flash kernels, and the ALiBi
  bound's row norms; under `torch.compile`;
- `fused`: `qk_rope` with its shipped launch setting (TILE / D rows a program, NUM_WARPS warps);
- `fused-t<TILE>-w<WARPS>`: other launch settings, to tune them (`--tiles`, `--warps`).

Each row: median ms with its interquartile range (CUDA events, warm-up first), and the rate over the bytes a
fused pass must move (forward: read x, write out; backward: read dout and x, write dx: 5 tensors of q's and k's
size) against the measured copy rate. The JSON leads with the commit, device and versions.

    python benchmarks/qk_rope_kernel.py --json qk.json [--tokens 32768] [--tiles 4096 8192 16384] [--warps 4 8]
    python benchmarks/qk_rope_kernel.py --smoke --json /tmp/qk.json   # CPU: small shapes, the ops row eager
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import TimingConfig, time_fn
from andromeda.model.backends import qk_rope
from andromeda.model.norms import QKNorm
from andromeda.model.positional import anchored_xpos, apply_rotary, rotary_tables

HEADS, KV_HEADS, DIM_HEAD, ROT_DIM, SEQ, SCALE_BASE = 24, 1, 128, 64, 2048, 512.0


def _inputs(tokens: int, seq: int, heads: int, kv: int, d: int, rot: int, device, dtype):
    """q (B, N, H, D) and k (B, N, H_kv, D) views of projection outputs, their QKNorms, and the rope tables."""
    b = max(1, tokens // seq)
    q = torch.randn(b, seq, heads * d, device=device, dtype=dtype).view(b, seq, heads, d).requires_grad_()
    k = torch.randn(b, seq, kv * d, device=device, dtype=dtype).view(b, seq, kv, d).requires_grad_()
    norms = [QKNorm(h, d, True).to(device=device, dtype=dtype) for h in (heads, kv)]
    for m in norms:
        with torch.no_grad():
            m.gain.uniform_(0.5, 1.5)
    cos, sin = rotary_tables(torch.arange(seq, device=device), rot)
    xpos = anchored_xpos(0, seq, rot, SCALE_BASE, device=device)
    return q, k, norms, (cos, sin, xpos)


def ops(q, k, norms, rope):
    """The model's unfused path (Attention._project, _norms, _rotate, then the flash wrapper's contiguous)."""
    cos, sin, xpos = rope
    qh, kh = norms[0](q.transpose(1, 2)), norms[1](k.transpose(1, 2))
    qn = torch.linalg.vector_norm(qh.detach(), dim=-1, dtype=torch.float32)
    kn = torch.linalg.vector_norm(kh.detach(), dim=-1, dtype=torch.float32)
    return (apply_rotary(qh, cos, sin, xpos.scale).contiguous(), apply_rotary(kh, cos, sin, xpos.inv).contiguous(),
            qn, kn)


def fused(q, k, norms, rope):
    cos, sin, xpos = rope
    qo, qn = qk_rope.qk_rope(q, norms[0].gain, cos, sin, xpos.scale, want_norms=True)
    ko, kn = qk_rope.qk_rope(k, norms[1].gain, cos, sin, xpos.inv, want_norms=True)
    return qo, ko, qn, kn


def build(row: str, q, k, norms, rope, compile_: bool):
    """(fn doing one forward + backward of q and k, bytes a fused pass moves)."""
    f = fused if row.startswith("fused") else (torch.compile(ops) if compile_ else ops)
    params = [q, k, norms[0].gain, norms[1].gain]
    gq, gk = (torch.randn(t.shape[0], t.shape[2], t.shape[1], t.shape[3], device=t.device, dtype=t.dtype)
              for t in (q, k))  # gradients of the (B, H, N, D) outputs

    def step():
        qo, ko, _, _ = f(q, k, norms, rope)
        return torch.autograd.grad((qo, ko), params, (gq, gk))

    return step, 5 * (q.numel() + k.numel()) * q.element_size()


def _launch(row: str) -> tuple[int, int]:
    """The row's (TILE, NUM_WARPS): the shipped ones for `fused`, else parsed from fused-t<TILE>-w<WARPS>."""
    if row == "fused":
        return qk_rope.TILE, qk_rope.NUM_WARPS
    tile, warps = row.removeprefix("fused-t").split("-w")
    return int(tile), int(warps)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=32768, help="q and k rows: tokens / 2,048 sequences of 2,048")
    ap.add_argument("--tiles", type=int, nargs="*", default=[4096, 16384], help="TILE values besides the shipped")
    ap.add_argument("--warps", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--smoke", action="store_true", help="CPU: 2 x 64 tokens, 3 heads of 32; the ops row eager; "
                                                         "the fused rows only under TRITON_INTERPRET=1")
    args = ap.parse_args(argv)
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    shape = (128, 64, 3, 1, 32, 16) if smoke else (args.tokens, SEQ, HEADS, KV_HEADS, DIM_HEAD, ROT_DIM)
    fl = None if smoke else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": vars(args) | {"json": str(args.json)},
           "shape": dict(zip(("tokens", "seq", "heads", "kv_heads", "dim_head", "rot_dim"), shape, strict=True),
                         dtype=str(dtype)), "rows": []}
    rows = ["ops-compiled", "fused"] + [f"fused-t{t}-w{w}" for t in args.tiles for w in args.warps
                                         if (t, w) != (qk_rope.TILE, qk_rope.NUM_WARPS)]
    runs_fused = not smoke or os.environ.get("TRITON_INTERPRET") == "1"
    cfg = TimingConfig(warmup=3, min_runs=10, max_runs=50, budget_s=0.3 if smoke else 2.0)
    shipped = (qk_rope.TILE, qk_rope.NUM_WARPS)
    for row in rows:
        if row.startswith("fused") and not runs_fused:
            res["rows"].append({"row": row, "skipped": "the kernels run on CUDA, or on CPU under TRITON_INTERPRET=1"})
            continue
        t0 = time.perf_counter()
        try:
            if row.startswith("fused"):
                qk_rope.TILE, qk_rope.NUM_WARPS = _launch(row)
            fn, nbytes = build(row, *_inputs(*shape, device, dtype), compile_=not smoke)
            fn()  # compile outside the timing
            compile_s = time.perf_counter() - t0
            t = time_fn(fn, device, cfg)
        except Exception as e:  # a launch setting that does not fit is recorded, the rest run
            res["rows"].append({"row": row, "error": f"{type(e).__name__}: {e}"[:400]})
            print(f"{row:22s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        finally:
            qk_rope.TILE, qk_rope.NUM_WARPS = shipped
        s = t.summary
        p25, p75 = (float(v) for v in np.percentile(t.samples_ms, [25, 75]))
        out = {"row": row, "median_ms": s.median, "p25_ms": p25, "p75_ms": p75, "runs": len(t.samples_ms),
               "compile_s": round(compile_s, 1), "gb_per_s": nbytes / s.median / 1e6}
        if fl and fl.get("copy_gb_per_s"):
            out["of_copy_rate"] = out["gb_per_s"] / fl["copy_gb_per_s"]
        res["rows"].append(out)
        print(f"{row:22s} {s.median:8.3f} ms [{p25:.3f} - {p75:.3f}]  {out['gb_per_s']:.0f} GB/s of the fused "
              f"pass's bytes (compile {compile_s:.0f} s)", flush=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
    args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
