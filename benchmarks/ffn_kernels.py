"""The training step's feed-forward on the GPU: where its elementwise time goes, and what removes it.

Issue 26 (training speed): a profile of the 2.5B fast step at 2K context put our elementwise kernels at 154 ms
a step against 81 for the matched Llama, and the largest of them are the exact GELU of the 10,240-wide FFN
(forward 0.55 ms, backward 0.82 ms a layer at 32K tokens on an H200: about half the copy bandwidth the
Llama's SiLU-gate kernels reach). This script times, forward + backward at the `andromeda` preset's shape
(dim 2,560, hidden 10,240, bias, bf16), side by side in one process:

- `gelu-exact` / `gelu-tanh`: the activation alone, compiled (forward: read h, write gelu(h); backward: read
  h and the gradient, write the input gradient), with the bytes moved and their rate against the copy floor;
- `ffn-*`: the whole FFN (w_in + bias, activation, w_out + bias), compiled with inductor's defaults,
  with matmul autotuning (`max_autotune_gemm`: Triton templates that can take bias and GELU into their
  epilogue), with coordinate-descent tuning, with the tanh GELU (a different function: named as such),
  and with the activation removed (the matmuls' own time: what fusing could at best reach);
- `llama-ffn`: the matched Llama's SiLU-gate FFN (hidden 6,848, no bias), the baseline's same-FLOP work.

Each row: median ms with its interquartile range (CUDA events, warm-up first), TFLOP/s over the FFN's matmul
FLOPs (forward + backward: 3 x 2 x tokens x dim x hidden x matmuls), and for the activation rows GB/s
against the measured copy rate. The JSON leads with the commit, device and versions.

    python benchmarks/ffn_kernels.py --json ffn.json [--tokens 32768] [--rows gelu-exact ffn-compiled ...]
    python benchmarks/ffn_kernels.py --smoke --json /tmp/ffn.json   # CPU check: small shapes, eager
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import TimingConfig, time_fn

DIM, HIDDEN, LLAMA_HIDDEN = 2560, 10240, 6848
INDUCTOR = {"ffn-compiled": {}, "ffn-gemm-autotune": {"max_autotune_gemm": True},
            "ffn-coord-descent": {"coordinate_descent_tuning": True}, "ffn-tanh": {}, "ffn-no-activation": {},
            "llama-ffn": {}}
ROWS = ["gelu-exact", "gelu-tanh", *INDUCTOR]


def _gelu_fn(approx: str):
    return lambda h: F.gelu(h, approximate=approx)


def ffn(x, w_in, b_in, w_out, b_out, act):
    return F.linear(act(F.linear(x, w_in, b_in)), w_out, b_out)


def llama_ffn(x, w_gate, w_up, w_down):
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def _params(dims: list[tuple[int, int]], bias: bool, device, dtype) -> list[torch.Tensor]:
    out = []
    for o, i in dims:
        out.append((torch.randn(o, i, device=device, dtype=dtype) * i ** -0.5).requires_grad_())
        if bias:
            out.append(torch.zeros(o, device=device, dtype=dtype).requires_grad_())
    return out


def build(row: str, tokens: int, dim: int, hidden: int, device, dtype, compile_: bool):
    """(fn doing one forward + backward, matmul FLOPs of it, activation bytes or None)."""
    x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
    opts = INDUCTOR.get(row)
    if row.startswith("gelu-"):
        h = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
        f = _gelu_fn("tanh" if row == "gelu-tanh" else "none")
        f = torch.compile(f) if compile_ else f
        gy = torch.randn_like(h)
        # forward reads h, writes y; backward reads h and gy, writes dh: 5 tensors of tokens x hidden
        return (lambda: torch.autograd.grad(f(h), [h], gy)), 0.0, 5 * h.numel() * h.element_size()
    if row == "llama-ffn":
        hidden = LLAMA_HIDDEN * hidden // HIDDEN
        params = _params([(hidden, dim), (hidden, dim), (dim, hidden)], False, device, dtype)
        f, n_mm = llama_ffn, 3
    else:
        act = {"ffn-tanh": _gelu_fn("tanh"), "ffn-no-activation": (lambda t: t)}.get(row, _gelu_fn("none"))
        params = _params([(hidden, dim), (dim, hidden)], True, device, dtype)
        f, n_mm = (lambda *a: ffn(*a, act)), 2
    if compile_:
        f = torch.compile(f, options=opts) if opts else torch.compile(f)
    gy = torch.randn(tokens, dim, device=device, dtype=dtype)
    flops = 3 * 2 * tokens * dim * hidden * n_mm
    return (lambda: torch.autograd.grad(f(x, *params), [x, *params], gy)), float(flops), None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    ap.add_argument("--smoke", action="store_true", help="CPU check: 64 tokens, dim 32, hidden 128, eager")
    args = ap.parse_args(argv)
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    tokens, dim, hidden = (64, 32, 128) if smoke else (args.tokens, DIM, HIDDEN)
    fl = None if smoke else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": vars(args) | {"json": str(args.json)},
           "shape": dict(tokens=tokens, dim=dim, hidden=hidden, llama_hidden=LLAMA_HIDDEN * hidden // HIDDEN,
                         dtype=str(dtype)), "rows": []}
    cfg = TimingConfig(warmup=3, min_runs=10, max_runs=50, budget_s=0.5 if smoke else 3.0)
    for row in args.rows:
        t0 = time.perf_counter()
        try:
            fn, flops, nbytes = build(row, tokens, dim, hidden, device, dtype, compile_=not smoke)
            fn()  # compile (and autotune) outside the timing
            compile_s = time.perf_counter() - t0
            t = time_fn(fn, device, cfg)
        except Exception as e:  # a row that fails (an autotune error, out of memory) is recorded, the rest run
            res["rows"].append({"row": row, "error": f"{type(e).__name__}: {e}"[:400]})
            print(f"{row:20s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        s = t.summary
        p25, p75 = (float(v) for v in np.percentile(t.samples_ms, [25, 75]))
        out = {"row": row, "median_ms": s.median, "p25_ms": p25, "p75_ms": p75, "runs": len(t.samples_ms),
               "compile_s": round(compile_s, 1)}
        if flops:
            out["matmul_tflops"] = flops / s.median / 1e9
        if nbytes:
            out["gb_per_s"] = nbytes / s.median / 1e6
            if fl and fl.get("copy_gb_per_s"):
                out["of_copy_rate"] = out["gb_per_s"] / fl["copy_gb_per_s"]
        res["rows"].append(out)
        extra = (f"{out['matmul_tflops']:.0f} TFLOP/s" if flops else f"{out['gb_per_s']:.0f} GB/s")
        print(f"{row:20s} {s.median:8.3f} ms [{p25:.3f} - {p75:.3f}]  {extra}  (compile {compile_s:.0f} s)",
              flush=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
        if not smoke:
            torch.compiler.reset()
    args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
