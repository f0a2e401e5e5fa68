"""context_parallel: prefill latency of one sequence split over N processes (model/context_parallel.py), with the
communication share, per-rank balance, scaling efficiency and equality with the single-process forward. Needs
the manifest's launcher; each N (the `ranks` sweep) is one torchrun launch, its lengths run shortest first.

Every rank builds the same model from the same seed and prefills the same random tokens (logits for the last
position only). At N > 1 the timed call is `prefill(model, tokens)`: the sequence in 2N chunks, each rank one
early and one late chunk, keys and values all-gathered per chunk and layer. At N = 1 it is the model's own
forward, `model(tokens, logits="last")`: the single-device baseline the efficiency is measured against.

Per length, every rank runs `warmup` + `iters` prefills, each between barriers (outside the timed region),
timed as measure/timing.py times anything (CUDA events, perf_counter on the CPU). A prefill ends when its
slowest rank ends, so run i's latency is the max over ranks of run i's times:
  latency_ms            median over runs (with bootstrap CI, IQR, CV: measure/stats.py), tokens_per_s
  tflops, tflops_per_rank, mfu   the analytic forward FLOPs (measure/flops.py, logits for one position) over
                        the latency; per rank: / N; MFU against the device's datasheet peak (CUDA)
Then `comm_runs` more prefills with every collective synchronized and timed (prefill(stats=)); on rank r,
run i's total time T and collective time C give its compute time T - C (its own work, not waiting for others):
  comm_ms, comm_share   median over ranks of each rank's median C, and of each rank's median C / T;
                        comm_share_max the largest rank's share. At N = 1: 0 (no collective)
  compute_ms            mean over ranks of each rank's median compute time
  compute_ms_max_over_mean_ranks   max / mean of those medians: the per-rank balance (1 = even)
The check, once per launch at `check_len`: every rank prefills those tokens with logits for every position
(at N = 1 too, through prefill over one rank) and compares its chunks with the model's own forward of the same
tokens on the same rank:
  logits_max_abs_diff   max over ranks and positions of |sharded - single| (the logits' dtype, compared in fp32)
  logits_rel_diff       that over the largest |logit| of the forward; matches_single: 1 when it is at most
                        check_rtol, else 0
Samples: latency_ms per run (max over ranks) and every rank's latency_ms, total_ms, comm_ms and compute_ms as
<name>@rank<r>.

After the sweep, one record per (N, length) with `efficiency: true`, against the fewest ranks n0 that ran that
length (1 when present): speedup T(n0) / T(N), scaling_efficiency T(n0) n0 / (N T(N)), ideal_latency_ms
T(n0) n0 / N.

At N = 1 a length that runs out of memory is recorded as `oom` and the longer ones as skipped. At N > 1 an
out-of-memory error fails the launch (a rank cannot leave the others waiting in a collective): list the
lengths that may not fit in an entry of their own.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from andromeda.measure.balance import rank_spread
from andromeda.measure.flops import forward_flops, mfu
from andromeda.measure.memory import free_memory, is_oom
from andromeda.measure.stats import summarize
from andromeda.measure.timing import Stopwatch, time_fn
from andromeda.model import Andromeda
from andromeda.model.context_parallel import layout, prefill
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, random_tokens
from andromeda.scenarios.config.context_parallel import DEFAULT_RTOL, ContextParallelConfig
from andromeda.scenarios.multiprocess import barrier, dist_of, fixed_count_timing
from andromeda.sources import models

_PER_RANK = ("latency_ms", "total_ms", "comm_ms", "compute_ms")


# ---- the model and its check ----------------------------------------------------------------------
def model_for(bundle, p, ctx):
    """(bundle, dtype name) of the model this entry prefills: the entry's `model` (built here, from the run's seed:
    the same weights on every rank) or the manifest's, in the entry's dtype or the run's."""
    dtype = getattr(torch, p["dtype"]) if p["dtype"] else ctx.dtype
    if p["model"] is not None and p["model"] != bundle.source:
        torch.manual_seed(ctx.seed)
        with torch.device(ctx.device):  # initialized where it runs: seconds, not minutes, for billions of weights
            bundle = models.build(p["model"], ctx.device, dtype)
    elif next(bundle.model.parameters()).dtype != dtype:
        bundle.model.to(dtype)
    return bundle, str(dtype).removeprefix("torch.")


def unsupported(bundle, lengths: list[int], world: int) -> str | None:
    """Why this launch cannot run (a skip reason), or None."""
    if not isinstance(bundle.model, Andromeda):
        return (f"context-parallel prefill runs Andromeda models (model/context_parallel.py); {bundle.source} is "
                f"a {bundle.info.get('kind', type(bundle.model).__name__)} model")
    long = [n for n in lengths if check_length(bundle, n) is not None]
    if long:
        return (f"seq_lens {long} exceed the model's max_seq_len {bundle.facts.max_seq_len}; drop them or raise it "
                "(andromeda:<preset>?max_seq_len=N)")
    least = 2 * world * max(bundle.model.cfg.shift_tokens, 1)
    short = [n for n in lengths if n < least]
    if short:
        return (f"seq_lens {short} do not split into 2 x {world} chunks of at least "
                f"{max(bundle.model.cfg.shift_tokens, 1)} positions (token shift); at least {least}")
    return None


@torch.no_grad()
def check(bundle, p, ctx, world: int) -> tuple[dict[str, float], str]:
    """This rank's sharded logits at check_len against the model's own forward: (metrics, what was compared)."""
    n, model = p["check_len"], bundle.model
    if n is None:
        return {}, "no check (check_len: null)"
    if (why := unsupported(bundle, [n], world)) is not None:
        return {}, f"no check at check_len {n}: {why}"
    tokens = random_tokens(bundle, p["batch"], n, ctx.device, seed=ctx.seed + 1)
    ref = model(tokens, logits="all").float()  # (B, n, V)
    diff = 0.0
    for a, e, out in prefill(model, tokens, logits="all"):
        diff = max(diff, float((out.float() - ref[:, a:e]).abs().max()))
    return ({"logits_max_abs_diff": diff, "logits_max_abs": float(ref.abs().max())},
            f"logits of all {n} positions vs the single-process forward of the same tokens")


# ---- one rank's measurements -----------------------------------------------------------------------
def measure(bundle, tokens: torch.Tensor, p, ctx, world: int) -> dict[str, list[float]]:
    """This rank's samples (ms) for one length: latency_ms per timed run; total_ms, comm_ms, compute_ms per
    synchronized run (at N = 1 the timed runs, with no collective)."""
    model = bundle.model
    if world == 1:
        def fn():
            with torch.no_grad():
                return model(tokens, logits="last")
    else:
        def fn():
            return prefill(model, tokens)
    t = time_fn(fn, ctx.device, fixed_count_timing(ctx, p["warmup"], p["iters"]), setup=lambda: barrier(ctx.device))
    if world == 1:
        total, comm = list(t.samples_ms), [0.0] * len(t.samples_ms)
    else:
        total, comm = [], []
        for _ in range(p["comm_runs"]):
            barrier(ctx.device)
            stats: dict = {}
            with Stopwatch(ctx.device) as sw:
                prefill(model, tokens, stats=stats)
            total.append(sw.elapsed_ms)
            comm.append(1e3 * stats["comm_s"])
    return {"latency_ms": list(t.samples_ms), "total_ms": total, "comm_ms": comm,
            "compute_ms": [a - b for a, b in zip(total, comm, strict=True)]}


def row_metrics(ranks: list[dict[str, list[float]]], checks: list[dict[str, float]], p, seq: int, flops: float,
                peak: float | None, rtol: float) -> tuple[dict[str, float], list[float]]:
    """The row's metrics from every rank's samples and check (one rank: that rank's view), and the latency per
    run (max over ranks)."""
    world = len(ranks)
    runs = np.array([r["latency_ms"] for r in ranks], dtype=float).max(axis=0)  # (iters,) the slowest rank's
    m = summarize(runs).to_metrics("latency_ms")
    seconds = m["latency_ms"] / 1e3
    m["tokens_per_s"] = p["batch"] * seq / seconds
    m["tflops"] = flops / seconds / 1e12
    m["tflops_per_rank"] = m["tflops"] / world
    if (u := mfu(flops / world, seconds, peak)) is not None:
        m["mfu"] = u
    comm = [float(np.median(r["comm_ms"])) for r in ranks]
    shares = [float(np.median(np.array(r["comm_ms"]) / np.array(r["total_ms"]))) for r in ranks]
    compute = rank_spread([float(np.median(r["compute_ms"])) for r in ranks])
    m.update(comm_ms=float(np.median(comm)), comm_share=float(np.median(shares)), comm_share_max=max(shares),
             compute_ms=compute["mean"], compute_ms_max_over_mean_ranks=compute["max"] / compute["mean"])
    if checks and all(checks):
        diff = max(c["logits_max_abs_diff"] for c in checks)
        scale = max(c["logits_max_abs"] for c in checks)
        rel = diff / scale if scale > 0 else float(diff > 0)
        m.update(logits_max_abs_diff=diff, logits_max_abs=scale, logits_rel_diff=rel, matches_single=float(rel <= rtol))
    return m, runs.tolist()


# ---- the scenario ---------------------------------------------------------------------------------
@register("context_parallel")
class ContextParallel:
    Config = ContextParallelConfig

    def run(self, bundle, p, ctx):
        d = dist_of(ctx)
        world = d.world_size
        bundle, dtype = model_for(bundle, p, ctx)
        lengths = sorted(p["seq_lens"])
        params = {"ranks": world, "model": bundle.source, "dtype": dtype}
        if (why := unsupported(bundle, lengths, world)) is not None:
            return ctx.skip(why)
        rtol = p["check_rtol"] or DEFAULT_RTOL[dtype]
        checked, what = check(bundle, p, ctx, world)
        peak = ctx.peak_for(dtype)
        info = {"backend": d.backend, "check": what, "check_rtol": rtol,
                "timed": "the model's own forward (no collective)" if world == 1 else
                "prefill over the ranks (model/context_parallel.py)"}
        records, oom = [], None
        for seq in lengths:
            row = {**params, "seq_len": seq}
            if oom is not None:
                records.append(ctx.record(status="skipped", params=row,
                                          message=f"not run: seq_len {oom} ran out of memory"))
                continue
            tokens = random_tokens(bundle, p["batch"], seq, ctx.device, seed=ctx.seed + seq)
            try:
                samples = measure(bundle, tokens, p, ctx, world)
            except Exception as e:
                if world > 1 or not is_oom(e):
                    raise
                oom = seq
                free_memory(ctx.device)
                records.append(ctx.record(status="oom", params=row, message=str(e).splitlines()[0][:300]))
                continue
            flops = forward_flops(bundle.facts, p["batch"], seq, lm_head="last").total
            m, _ = row_metrics([samples], [checked], p, seq, flops, peak, rtol)
            chunks = layout(seq, world, bundle.model.cfg.shift_tokens) if world > 1 else None
            records.append(ctx.record(m, samples=samples, params=row,
                                      info={**info, "flops": flops, "chunks": chunks}))
        return records

    def merge(self, merged, per_rank, ctx):
        """Rank 0: each length's per-rank records -> its one record (see the module docstring)."""
        for i, rec in enumerate(merged):
            ranks = [recs[i] for recs in per_rank]
            samples = [{k: r.samples[k] for k in _PER_RANK} for r in ranks]
            checks = [{k: r.metrics[k] for k in ("logits_max_abs_diff", "logits_max_abs") if k in r.metrics}
                      for r in ranks]
            m, runs = row_metrics(samples, checks, rec.params, rec.params["seq_len"], rec.info["flops"],
                                  ctx.peak_for(rec.params["dtype"]), rec.info["check_rtol"])
            rec.metrics = m
            rec.samples = {"latency_ms": runs, **{k: v for k, v in rec.samples.items() if "@rank" in k}}
            rec.info["latency"] = "per run, the slowest rank's time between barriers; median over runs"
        return merged

    def finalize(self, bundle, records, ctx):
        points = [r for r in records if r.status == "ok" and not r.params.get("efficiency")
                  and isinstance(r.params.get("ranks"), int) and "latency_ms" in r.metrics]
        by_len: dict[tuple, dict[int, object]] = {}
        for r in points:
            key = (r.params["seq_len"], r.params["model"], r.params["dtype"], r.params["batch"])
            by_len.setdefault(key, {})[r.params["ranks"]] = r  # a point run twice (2 and "all"): the last
        out = []
        for by_n in by_len.values():
            ns = sorted(by_n)
            if len(ns) < 2:
                continue
            n0, t0 = ns[0], by_n[ns[0]].metrics["latency_ms"]
            for n in ns:
                r = by_n[n]
                t = r.metrics["latency_ms"]
                fixed = {k: v for k, v in r.params.items() if k != "seq_lens"}
                rec = ctx.record({"latency_ms": t, "base_latency_ms": t0, "base_ranks": float(n0),
                                  "ideal_latency_ms": t0 * n0 / n, "speedup": t0 / t,
                                  "scaling_efficiency": t0 * n0 / (n * t)},
                                 params={**fixed, "efficiency": True},
                                 info={"efficiency": f"T({n0}) x {n0} / ({n} x T({n})): T the median latency "
                                                     f"of the case at that many ranks"})
                key = f"{r.source}|context_parallel-efficiency|{sorted(fixed.items(), key=str)}"
                rec.case_id = hashlib.sha1(key.encode()).hexdigest()[:16]
                out.append(rec)
        return out


__all__ = ["ContextParallelConfig", "ContextParallel", "row_metrics", "model_for", "unsupported", "check"]
