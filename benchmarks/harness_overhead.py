"""Timing noise and harness overhead on a GPU, in one run.

- noise: the CV of repeated medians of our timer on the same forward;
- overhead: our timer's median against triton.testing.do_bench's median on the same forward,
  interleaved so drift affects both alike;
- floors: the measured bf16 matmul rate and device-to-device copy bandwidth of this run.

    python benchmarks/harness_overhead.py [--preset base] [--shapes 1x2048,8x8192] [--reps 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from andromeda.measure.env import collect_env
from andromeda.measure.timing import TimingConfig, time_fn
from andromeda.model import Andromeda, from_name


def floors(do_bench) -> dict[str, float]:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms_copy = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return {"matmul_bf16_tflops": 2 * n**3 / (ms / 1e3) / 1e12,
            "copy_gb_per_s": 2 * src.nbytes / (ms_copy / 1e3) / 1e9}


def compare(model, batch: int, seq: int, reps: int, do_bench) -> dict:
    tokens = torch.randint(0, 50000, (batch, seq), device="cuda")

    def fwd():
        with torch.inference_mode():
            model(tokens)

    plain = TimingConfig(warmup=5, min_runs=30, max_runs=30, budget_s=60, target_rel_ci=None)
    flushed = TimingConfig(warmup=5, min_runs=30, max_runs=30, budget_s=60, target_rel_ci=None, flush_l2=True)
    time_fn(fwd, "cuda", plain)  # compilation / allocator warm-up outside the comparison
    ours, ours_flush, theirs = [], [], []
    for _ in range(reps):  # interleaved, so drift affects all three alike
        ours.append(time_fn(fwd, "cuda", plain).median_ms)
        ours_flush.append(time_fn(fwd, "cuda", flushed).median_ms)
        theirs.append(do_bench(fwd, warmup=25, rep=200, return_mode="median"))

    def cv(xs):
        return statistics.stdev(xs) / statistics.mean(xs)

    return {
        "batch": batch, "seq": seq, "reps": reps,
        "ours_medians_ms": ours, "ours_flush_medians_ms": ours_flush, "do_bench_medians_ms": theirs,
        "ours_ms": statistics.median(ours), "ours_flush_ms": statistics.median(ours_flush),
        "do_bench_ms": statistics.median(theirs),
        "ours_cv": cv(ours), "ours_flush_cv": cv(ours_flush), "do_bench_cv": cv(theirs),
        "ratio_ours_flush_vs_do_bench": statistics.median(ours_flush) / statistics.median(theirs),
        "ratio_ours_vs_do_bench": statistics.median(ours) / statistics.median(theirs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base")
    ap.add_argument("--shapes", default="1x2048,8x8192", help="batch x seq pairs, comma-separated")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    from triton.testing import do_bench

    torch.manual_seed(0)
    model = Andromeda(from_name(args.preset)).cuda().to(torch.bfloat16).eval()
    rows = []
    for shape in args.shapes.split(","):
        b, n = (int(x) for x in shape.split("x"))
        rows.append(compare(model, b, n, args.reps, do_bench))
    res = {"preset": args.preset, "rows": rows,
           "backend": model.blocks[0].attn.backend(torch.device("cuda"), torch.bfloat16).name,
           **floors(do_bench), "env": collect_env()}
    print(f"{'shape':>10s} {'ours ms':>9s} {'ours+flush':>10s} {'do_bench':>9s} "
          f"{'CV ours':>8s} {'CV flush':>8s} {'CV d_b':>8s} {'flush/d_b':>9s}")
    for r in rows:
        print(f"{r['batch']:>4d}x{r['seq']:<5d} {r['ours_ms']:9.3f} {r['ours_flush_ms']:10.3f} {r['do_bench_ms']:9.3f} "
              f"{r['ours_cv']:8.4f} {r['ours_flush_cv']:8.4f} {r['do_bench_cv']:8.4f} "
              f"{r['ratio_ours_flush_vs_do_bench']:9.4f}")
    print(f"backend {res['backend']}; floors: matmul {res['matmul_bf16_tflops']:.0f} TFLOP/s, "
          f"copy {res['copy_gb_per_s']:.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
