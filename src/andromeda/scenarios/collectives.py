"""collectives: all-reduce and all-gather bandwidth measured alone, as nccl-tests reports it.
Needs the manifest's launcher.

For each op and size, every rank runs the collective `warmup` + `iters` times on a buffer on its
device (the backend's own: NCCL on CUDA, gloo on CPU), with a barrier before each run (outside
the timed region); each run is timed on each rank as the timing layer times anything (CUDA events
on the current stream, which waits for the collective; perf_counter on CPU). A run ends when its
slowest rank ends, so its time is the max over ranks. Before timing, one run on rank-dependent
values checks the result (all-reduce: the sum of 1..n; all-gather: each rank's block in order).

The size S is nccl-tests' "size": all-reduce, the buffer; all-gather, the gathered output (each
rank contributes S/n). From the median time t: algbw = S/t and busbw = algbw x 2(n-1)/n
(all-reduce) or x (n-1)/n (all-gather), in GB/s (1e9 B/s); see measure/balance.py. One record per
op x size; samples: the per-run time (max over ranks) and every rank's as time_us@rank<r>.
"""

from __future__ import annotations

import numpy as np
import torch

from andromeda.errors import ConfigError
from andromeda.measure.balance import algbw_gbps, bus_factor
from andromeda.measure.stats import summarize
from andromeda.measure.timing import time_fn
from andromeda.scenarios import register
from andromeda.scenarios.config.collectives import CollectivesConfig
from andromeda.scenarios.multiprocess import barrier, dist_of, fixed_count_timing

MiB = 2**20


def _all_gather(out: torch.Tensor, inp: torch.Tensor) -> None:
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the name of torch >= 2.13
    gather(out, inp)


def _op(op: str, count: int, n: int, dtype: torch.dtype, device: torch.device):
    """(run, check): the collective on fresh buffers of `count` elements (the op's size S)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    if op == "all_reduce":
        buf = torch.zeros(count, dtype=dtype, device=device)

        def check() -> bool:
            buf.fill_(rank + 1)
            dist.all_reduce(buf)
            ok = bool((buf == n * (n + 1) / 2).all())
            buf.zero_()  # timed runs reduce zeros: no overflow in low precision
            return ok

        return (lambda: dist.all_reduce(buf)), check
    out = torch.empty(count, dtype=dtype, device=device)
    inp = torch.zeros(count // n, dtype=dtype, device=device)

    def check_gather() -> bool:
        inp.fill_(rank)
        _all_gather(out, inp)
        want = torch.arange(n, dtype=dtype, device=device).repeat_interleave(count // n)
        inp.zero_()
        return bool(torch.equal(out, want))

    return (lambda: _all_gather(out, inp)), check_gather


@register("collectives")
class Collectives:
    Config = CollectivesConfig

    def run(self, bundle, p, ctx):
        d = dist_of(ctx)
        n = d.world_size
        dtype = getattr(torch, p["dtype"])
        elem = torch.empty((), dtype=dtype).element_size()
        timing = fixed_count_timing(ctx, p["warmup"], p["iters"])
        records = []
        for op in p["ops"]:
            for size in p["sizes_mib"]:
                count = max(n, int(size * MiB) // elem)
                count -= count % n  # all-gather: n equal blocks
                run, check = _op(op, count, n, dtype, ctx.device)
                if not check():
                    raise ConfigError(f"collectives: {op} over {n} ranks returned a wrong result "
                                      f"(backend {d.backend})")
                t = time_fn(run, ctx.device, timing, setup=lambda: barrier(ctx.device))
                us = [v * 1e3 for v in t.samples_ms]
                records.append(ctx.record({"time_us": float(np.median(us))}, samples={"time_us": us},
                                          params={"op": op, "size_mib": size, "size_bytes": count * elem,
                                                  "ranks": n},
                                          info={"backend": d.backend, "checked": True}))
                del run, check
        return records

    def merge(self, merged, per_rank, ctx):
        n = len(per_rank)
        for i, rec in enumerate(merged):
            times = np.array([recs[i].samples["time_us"] for recs in per_rank], dtype=float)  # (R, iters)
            t = times.max(axis=0)  # a run ends when its slowest rank does
            m = summarize(t).to_metrics("time_us")
            size = rec.params["size_bytes"]
            m["algbw_gbps"] = algbw_gbps(size, m["time_us"] / 1e6)
            m["busbw_gbps"] = m["algbw_gbps"] * bus_factor(rec.params["op"], n)
            best = float(t.min())
            m["busbw_gbps_best"] = algbw_gbps(size, best / 1e6) * bus_factor(rec.params["op"], n)
            rec.metrics = m
            rec.samples = {"time_us": t.tolist(), **{k: v for k, v in rec.samples.items() if "@rank" in k}}
            rec.info["bandwidth"] = ("nccl-tests: algbw = S/t, busbw = algbw x " +
                                     ("2(n-1)/n" if rec.params["op"] == "all_reduce" else "(n-1)/n") +
                                     "; t = median over runs of the slowest rank's time")
        return merged


__all__ = ["CollectivesConfig", "Collectives"]
