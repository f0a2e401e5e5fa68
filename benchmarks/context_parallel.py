"""Context-parallel prefill over the GPUs of one host (model/context_parallel.py): latency against sequence
length and GPU count, with the communication share, per-rank balance and scaling efficiency (issue: past one
GPU; the spec's "32,000+ tokens in < 100 ms").

    torchrun --nproc_per_node 8 benchmarks/context_parallel.py --json cp-8.json [--lengths 8192 32768 131072]
    torchrun --nproc_per_node 2 benchmarks/context_parallel.py --smoke --json /tmp/cp.json   # CPU, gloo

Per length, on every rank (the same weights and tokens): warm-up, then --reps prefills of the whole sequence
(logits for the last position only), each between barriers and synchronized; the latency is the slowest
rank's, the median over reps. One more prefill with each all-gather synchronized and timed gives each rank's
communication time (the share of its prefill time; that run is not in the latency). Rank 0 also runs the
single-device forward of the same tokens (in the same process, the other ranks waiting) for the scaling
efficiency T1 / (N x TN); at lengths where one device runs out of memory it is left out. Rank 0 writes the
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import Stopwatch
from andromeda.model import Andromeda, from_name
from andromeda.model.context_parallel import layout, prefill


def _timed(fn, device: torch.device) -> float:
    """Seconds of fn() on every rank, between barriers, synchronized; the slowest rank's."""
    dist.barrier()
    with Stopwatch(device) as sw:
        fn()
    t = torch.tensor([sw.elapsed_s], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _per_rank(value: float) -> list[float]:
    out = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64))
    return [float(t) for t in out]


def row(model, n: int, reps: int, device: torch.device, single: bool) -> dict:
    world = dist.get_world_size()
    tokens = torch.randint(0, model.cfg.num_tokens, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
    prefill(model, tokens)  # warm-up: kernels, allocator
    runs = sorted(_timed(lambda: prefill(model, tokens), device) for _ in range(reps))
    stats: dict = {}
    dist.barrier()
    with Stopwatch(device) as sw:
        prefill(model, tokens, stats=stats)
    totals, comms = _per_rank(sw.elapsed_s), _per_rank(stats["comm_s"])
    r = {"n": n, "world": world, "prefill_ms": 1e3 * runs[len(runs) // 2], "prefill_ms_runs": [1e3 * t for t in runs],
         "rank_ms_timed_run": [1e3 * t for t in totals], "rank_comm_ms": [1e3 * t for t in comms],
         "comm_share": max(c / t for c, t in zip(comms, totals, strict=True)),
         "balance_max_over_min": max(t - c for c, t in zip(comms, totals, strict=True))
         / min(t - c for c, t in zip(comms, totals, strict=True)),
         "chunks": layout(n, world, model.cfg.shift_tokens)}
    if single:
        one = None
        if dist.get_rank() == 0:
            try:
                with torch.no_grad():
                    model(tokens, logits="last")
                    with Stopwatch(device) as sw:
                        model(tokens, logits="last")
                one = sw.elapsed_s
            except torch.OutOfMemoryError:
                one = None
        dist.barrier()
        if one is not None:
            r["single_device_ms"] = 1e3 * one
            r["scaling_efficiency"] = one / (world * runs[len(runs) // 2])
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-single", action="store_true", help="skip the single-device forward on rank 0")
    ap.add_argument("--smoke", action="store_true", help="CPU and gloo: the tiny preset, short lengths")
    args = ap.parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    dist.init_process_group("gloo" if smoke else "nccl")
    rank = dist.get_rank()
    device = torch.device("cpu") if smoke else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    lengths = [128, 256] if args.smoke else args.lengths
    cfg = from_name("tiny" if smoke else args.preset, max_seq_len=max(lengths))
    torch.manual_seed(0)
    with torch.device(device):
        model = Andromeda(cfg).to(torch.float32 if smoke else torch.bfloat16).eval()
    fl = None if smoke or rank else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": {**vars(args), "json": str(args.json)}, "rows": []}
    for n in lengths:
        r = row(model, n, 2 if smoke else args.reps, device, not args.no_single)
        res["rows"].append(r)
        if rank == 0:
            args.json.write_text(json.dumps(res, indent=1, default=str))
            print(f"N={n} on {r['world']} ranks: {r['prefill_ms']:.1f} ms, communication {r['comm_share']:.1%}, "
                  f"balance {r['balance_max_over_min']:.2f}, scaling efficiency "
                  f"{r.get('scaling_efficiency', float('nan')):.1%}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
