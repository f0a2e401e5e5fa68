"""Where the time of Andromeda's prefill and decode step goes, by kernel, on one CUDA GPU.

torch.profiler over (a) a batch-1 prefill of `--prefill` tokens and (b) `--steps` CUDA-graph decode steps
after a 4K-token prompt; prints the GPU time per kernel class (attention, matmul, elementwise/norm,
other), the kernel count per step, and the wall time the GPU was busy vs the step's wall time. The JSON
leads with the git commit, device, versions and this run's floors (andromeda.measure.floors.provenance); its
env records the kernel tuning in force (kernel_tuning: --no-pdl shows as fused_decode.pdl false).

    python benchmarks/profile_model.py [--preset andromeda] [--prefill 32768] [--compile]
        [--kernels auto|torch|triton] [--no-pdl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.model import Andromeda, GraphedDecoder, from_name
from andromeda.model.backends import DecodeTuning, set_tuning

CLASSES = (("attention", ("_fwd", "flash", "fmha", "attention", "sdpa", "attn_")),
           ("matmul", ("gemm", "gemv", "sm90_xmma", "cutlass", "nvjet", "splitk")),
           ("softmax/reduce", ("softmax", "reduce")),
           ("copy/index", ("copy", "index", "cat", "fill")))


def classify(name: str) -> str:
    low = name.lower()
    for cls, keys in CLASSES:
        if any(k in low for k in keys):
            return cls
    return "elementwise/other"


def kernel_table(prof, divide: int) -> dict:
    """GPU time (ms) and count per kernel class, per call (divided by `divide`)."""
    out: dict[str, dict[str, float]] = {}
    top: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.device_time if hasattr(e, "device_time") else e.cuda_time
        c = out.setdefault(classify(e.name), {"ms": 0.0, "kernels": 0.0})
        c["ms"] += us / 1e3 / divide
        c["kernels"] += 1 / divide
        top[e.name[:90]] = top.get(e.name[:90], 0.0) + us / 1e3 / divide
    out["_top"] = dict(sorted(top.items(), key=lambda kv: -kv[1])[:12])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--prefill", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true",
                    help="profile the torch.compile'd model (prefill whole; decode step before capture)")
    ap.add_argument("--parts", default="prefill,decode_step", help="what to profile: prefill, decode_step")
    ap.add_argument("--kernels", default="auto", choices=("auto", "torch", "triton"),
                    help="the decode step's kernels (GraphedDecoder)")
    ap.add_argument("--no-pdl", action="store_true",
                    help="fused step without programmatic dependent launch: a kernel's time is then its own, "
                         "not also the wait for the one before")
    ap.add_argument("--json")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if bad := sorted(set(parts) - {"prefill", "decode_step"}):
        ap.error(f"--parts: unknown {', '.join(bad)}; choose from prefill, decode_step")
    if args.no_pdl:  # the fused decode step's; set before the environment is recorded, so that it says so
        set_tuning(DecodeTuning(pdl=False))
    head = floors.provenance(collect_env(), floors.measure("cuda"))  # before the model takes the memory
    torch.manual_seed(0)
    cfg = from_name(args.preset, max_seq_len=max(args.prefill, 4096 + args.steps + 8), pos_interpolation_factor=2)
    model = Andromeda(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    forward = torch.compile(model) if args.compile else model
    res: dict = {**head, "preset": args.preset, "compiled": args.compile}
    with torch.inference_mode():
        x = torch.randint(0, 256, (1, args.prefill), device="cuda")
        for _ in range(2 if "prefill" in parts else 0):
            forward(x, logits="last")
        torch.cuda.synchronize()
        if "prefill" in parts:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                forward(x, logits="last")
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) * 1e3
            res["prefill"] = {"tokens": args.prefill, "wall_ms": wall, **kernel_table(prof, 1)}

        if "decode_step" in parts:
            cache = model.new_cache(1, 4096 + args.steps + 8)
            t = model(torch.randint(0, 256, (1, 4096), device="cuda"), cache=cache, logits="last")[:, -1]
            t = t.argmax(-1, keepdim=True)
            dec = GraphedDecoder(model, cache, greedy=True, compile=args.compile, kernels=args.kernels)
            for _ in range(3):
                t = dec.step(t, clone=False)[1]
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    t = dec.step(t, clone=False)[1]
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) * 1e3 / args.steps
            res["decode_step"] = {"context": 4096, "kernels_used": dec.kernels, "wall_ms": wall,
                                  **kernel_table(prof, args.steps)}
    for part in parts:
        r = res[part]
        busy = sum(v["ms"] for k, v in r.items() if not k.startswith("_") and isinstance(v, dict))
        r["gpu_busy_ms"] = busy
        print(f"{part}: wall {r['wall_ms']:.2f} ms, kernels busy {busy:.2f} ms")
        for k, v in r.items():
            if isinstance(v, dict) and not k.startswith("_"):
                print(f"  {k:18s} {v['ms']:8.3f} ms  {v['kernels']:7.1f} kernels")
        for name, ms in r["_top"].items():
            print(f"    {ms:8.3f} ms  {name}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
