"""data_parallel: training throughput across processes with DDP or FSDP2, strong and weak scaling,
the communication share of a step, load balance and stragglers. Needs the manifest's launcher.

Every rank trains the model with the training loop of andromeda.train (Trainer.train_step: AdamW,
clipping, autocast; forward, backward and optimizer timed between device synchronizations) on its
own random tokens, wrapped in
  ddp    torch.nn.parallel.DistributedDataParallel (gradients all-reduced in backward), or
  fsdp   FSDP2: torch.distributed.fsdp.fully_shard on each block of the model's largest block
         list, then on the model (parameters, gradients and optimizer state sharded; all-gather in
         forward and backward, reduce-scatter of gradients).
scaling: weak = `batch` sequences per rank (the global batch grows with the ranks); strong =
`batch` sequences in total, split evenly over the ranks (a point where it does not split is
skipped). `warmup` steps are not timed; then `steps` timed steps.

One record per case. A step ends when its slowest rank ends (the ranks meet in collectives), so
the step time of step i is the max over ranks, and
  tokens_per_s          global tokens per step / that step time (median over steps, bootstrap CI)
  tokens_per_s_per_rank tokens_per_s / ranks
  tflops, tflops_per_rank, mfu   from the analytic model FLOPs of each rank's batch (measure/flops.py;
                        attention backward per the model's kernel: 2.5x forward where it recomputes,
                        2x where it saved the probabilities)
  hardware_tflops, hardware_tflops_per_rank, hfu   with activation_checkpointing: the same plus the
                        blocks' forward that the recompute runs again (flops.recomputed_forward_flops)
  peak_mib              the CUDA allocator's peak (max over ranks); off CUDA the process's peak RSS,
                        recorded as rss_peak_mib (it is not the model's memory)
  step_ms_max_over_min_ranks, step_ms_cv_ranks, forward_ms_*_ranks  spread of the per-rank
                        medians (CV with the population std); stragglers: the ranks whose median
                        step time is more than straggler_threshold above the median of the
                        others' (listed in info.stragglers, with a warning)
  comm_ms, comm_share   from `profile_steps` more steps under torch.profiler: the union of the
                        intervals during which a collective ran (CUDA: NCCL kernels on the device;
                        gloo: the gloo:<op> events, which span a collective from enqueue to
                        completion on gloo's threads) per step, over the profiled step time
                        (median over ranks; comm_share_max the largest). Communication that
                        overlaps compute counts: this is the share of the step during which a
                        collective was in flight, not the exposed (non-overlapped) time.
Samples: tokens_per_s and step_ms per step (over ranks), and every rank's step_ms, forward_ms,
backward_ms and optimizer_ms as <name>@rank<r>. Step times on the ranks are synchronized by the
collectives, so a slow rank shows mostly as waiting on the others: the load_balance scenario times
each rank's compute alone.

After the sweep, one record per (strategy, scaling) curve with `efficiency: true`: scaling
efficiency T(n) / (T(n0) n/n0) at each n, against the fewest ranks n0 that ran (1 when present).
"""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
import torch
from torch import nn

from andromeda.measure.balance import load_balance, rank_spread, scaling_efficiency
from andromeda.measure.stats import summarize
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, random_tokens
from andromeda.scenarios.config.data_parallel import DataParallelConfig
from andromeda.scenarios.multiprocess import barrier, dist_of
from andromeda.train.loop import TrainConfig, Trainer, enable_activation_checkpointing

_PHASES = ("step_ms", "forward_ms", "backward_ms", "optimizer_ms")
_POOL = 4  # distinct random batches per rank, cycled


# ---- wrapping -------------------------------------------------------------------------------------
class LossModule(nn.Module):
    """tokens -> the bundle's LM loss, as a module: DDP must see the whole forward through itself."""

    def __init__(self, bundle):
        super().__init__()
        self.model = bundle.model
        self._loss = bundle.loss

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._loss(tokens)


def block_list(model: nn.Module) -> nn.ModuleList | None:
    """The model's repeated blocks: its ModuleList with the most parameters (None if it has none)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return None
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def wrap(bundle, strategy: str, device: torch.device):
    """(module whose parameters the optimizer steps, tokens -> loss) for `strategy` on this rank."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # buffers are equal on every rank (same seed) and synced once at init; none to sync per forward
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})  # torch >= 2.13 / older
        ddp = DistributedDataParallel(LossModule(bundle), device_ids=[device.index] if device.type == "cuda" else None,
                                      **no_sync)
        return ddp, ddp
    if strategy == "fsdp":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        blocks = block_list(bundle.model)
        for block in blocks if blocks is not None else []:
            fully_shard(block, mesh=mesh)
        fully_shard(bundle.model, mesh=mesh)
        return bundle.model, bundle.loss
    raise ValueError(f"strategy '{strategy}' is unknown; use ddp or fsdp")


# ---- communication share --------------------------------------------------------------------------
def comm_intervals(events, device_type: str) -> list[tuple[float, float]]:
    """(start, end) in µs of the collectives in profiler events: NCCL kernels on the device, or the
    gloo:<op> events gloo records on its threads from enqueue to completion."""
    out = []
    for e in events:
        name = e.name.lower()
        on_device = str(getattr(e, "device_type", "")).endswith("CUDA")
        if (on_device and "nccl" in name) or name.startswith("gloo:"):
            out.append((float(e.time_range.start), float(e.time_range.end)))
    return out


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of intervals (overlapping collectives count once)."""
    total, end = 0.0, -np.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def profile_comm(trainer: Trainer, steps: int, device: torch.device) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        hist = [trainer.train_step() for _ in range(steps)]
    step_ms = sum(h["step_ms"] for h in hist)
    comm_ms = union_us(comm_intervals(prof.events(), device.type)) / 1e3
    return {"comm_ms": comm_ms / steps, "comm_share": comm_ms / step_ms, "profiled_step_ms": step_ms / steps}


# ---- the scenario ---------------------------------------------------------------------------------
@register("data_parallel")
class DataParallel:
    Config = DataParallelConfig

    def run(self, bundle, p, ctx):
        d = dist_of(ctx)
        world = d.world_size
        if p["scaling"] == "strong" and p["batch"] % world:
            return ctx.skip(f"strong scaling: the global batch {p['batch']} does not split evenly over {world} ranks")
        per_rank = p["batch"] // world if p["scaling"] == "strong" else p["batch"]
        if (reason := check_length(bundle, p["seq_len"])) is not None:
            return ctx.skip(reason)
        pool = [random_tokens(bundle, per_rank, p["seq_len"], ctx.device, seed=ctx.seed + 7919 * d.rank + i)
                for i in range(_POOL)]
        if p["activation_checkpointing"]:
            enable_activation_checkpointing(bundle.model)
        bundle.model.train()
        _, loss_fn = wrap(bundle, p["strategy"], ctx.device)  # DDP's module holds bundle.model's parameters
        # activation_checkpointing in the TrainConfig only tells the Trainer to count the recompute (HFU): it was
        # enabled above (train_step, called here, does not enable it; Trainer.run would). The Trainer gets the
        # unwrapped model (the same parameters as DDP's) so that it sees the attention kernel and the blocks.
        cfg = TrainConfig(steps=p["warmup"] + p["steps"] + p["profile_steps"], batch=per_rank, seq_len=p["seq_len"],
                          lr=p["lr"], warmup_steps=0, grad_clip=p["grad_clip"], precision=p["precision"],
                          activation_checkpointing=p["activation_checkpointing"], eval_every=0, seed=ctx.seed)
        trainer = Trainer(bundle.model, cfg, lambda i: pool[i % _POOL], loss_fn=loss_fn, device=ctx.device,
                          facts=bundle.facts, peak_tflops=ctx.peak_for_precision(p["precision"]))
        for _ in range(p["warmup"]):
            trainer.train_step()
        barrier(ctx.device)
        hist = [trainer.train_step() for _ in range(p["steps"])]
        metrics = {"step_ms": float(np.median([h["step_ms"] for h in hist])),
                   "tokens_per_s": float(np.median([h["tokens_per_s"] for h in hist]))}
        key = "peak_allocated_mib" if ctx.device.type == "cuda" else "peak_rss_mib"
        peak = [h.get(key) for h in hist]
        if all(v is not None for v in peak):
            metrics["peak_mib" if ctx.device.type == "cuda" else "rss_peak_mib"] = float(max(peak))
        if p["profile_steps"]:
            barrier(ctx.device)
            metrics.update(profile_comm(trainer, p["profile_steps"], ctx.device))
        samples = {k: [h[k] for h in hist] for k in _PHASES}
        info = {"tokens_per_step": cfg.tokens_per_step, "flops_per_step": trainer.flops_per_step,
                "hardware_flops_per_step": trainer.hardware_flops_per_step,
                "attention_backward": "recomputes (2.5x forward)" if trainer.attention_recompute
                else "saved probabilities (2x forward)",
                "backend": d.backend, "memory": "peak_mib: CUDA allocator peak" if ctx.device.type == "cuda" else
                "peak_mib not measured off CUDA; rss_peak_mib: the process's peak RSS (not the model's memory)"}
        params = {"ranks": world, "batch_per_rank": per_rank, "global_batch": per_rank * world}
        return [ctx.record(metrics, samples=samples, info=info, params=params)]

    def merge(self, merged, per_rank, ctx):
        """Rank 0: the per-rank records of the case -> its one record (see the module docstring)."""
        rec, world = merged[0], len(per_rank)
        ranks = [recs[0] for recs in per_rank]
        p = rec.params
        steps = np.array([r.samples["step_ms"] for r in ranks], dtype=float)  # (R, S)
        step = steps.max(axis=0)  # (S,) a step ends when its slowest rank does
        tokens = rec.info["tokens_per_step"] * world
        tps = tokens / (step / 1e3)
        m = summarize(tps).to_metrics("tokens_per_s")
        m["tokens_per_s_per_rank"] = m["tokens_per_s"] / world
        m["step_ms"] = float(np.median(step))
        for k in ("forward_ms", "backward_ms", "optimizer_ms"):
            m[k] = float(np.median(np.array([r.samples[k] for r in ranks], dtype=float).max(axis=0)))
        flops = rec.info.get("flops_per_step")
        if flops:
            m["tflops_per_rank"] = flops / (m["step_ms"] / 1e3) / 1e12
            m["tflops"] = m["tflops_per_rank"] * world
            if (peak := ctx.peak_for_precision(p["precision"])):
                m["mfu"] = m["tflops_per_rank"] / peak
        hardware = rec.info.get("hardware_flops_per_step")
        if hardware:  # activation checkpointing: the recomputed forward counted (HFU)
            m["hardware_tflops_per_rank"] = hardware / (m["step_ms"] / 1e3) / 1e12
            m["hardware_tflops"] = m["hardware_tflops_per_rank"] * world
            if (peak := ctx.peak_for_precision(p["precision"])):
                m["hfu"] = m["hardware_tflops_per_rank"] / peak
        balance, slow = load_balance([r.samples["step_ms"] for r in ranks], p["straggler_threshold"], "step_ms")
        m.update(balance)
        fwd = rank_spread([float(np.median(r.samples["forward_ms"])) for r in ranks])
        m["forward_ms_max_over_min_ranks"], m["forward_ms_cv_ranks"] = fwd["max_over_min"], fwd["cv"]
        if all("comm_share" in r.metrics for r in ranks):
            shares = [r.metrics["comm_share"] for r in ranks]
            m["comm_share"] = float(np.median(shares))
            m["comm_share_max"] = float(max(shares))
            m["comm_ms"] = float(np.median([r.metrics["comm_ms"] for r in ranks]))
        for name in ("peak_mib", "rss_peak_mib"):
            if all(name in r.metrics for r in ranks):
                m[name] = float(max(r.metrics[name] for r in ranks))
        nccl = ctx.device.type == "cuda" and rec.info["backend"] == "nccl"
        what = "NCCL kernels on the device" if nccl else "gloo:<op> profiler events (enqueue to completion)"
        info = {**rec.info, "stragglers": slow,
                "step_time": "per step, the max over ranks (a step ends when its slowest rank does)",
                "comm": f"{what}: their union per step over the profiled step time (overlapped communication counts)"}
        if slow:
            info["warnings"] = (f"straggler rank(s) {slow}: median step time more than "
                                f"{p['straggler_threshold']:.0%} above the median of the other ranks")
        samples = {k: v for k, v in rec.samples.items() if "@rank" in k}
        samples.update(tokens_per_s=tps.tolist(), step_ms=step.tolist())
        rec.metrics, rec.samples, rec.info = m, samples, info
        return [rec]

    def finalize(self, bundle, records, ctx):
        ok = [r for r in records if r.status == "ok" and not r.params.get("efficiency") and "tokens_per_s" in r.metrics]
        curves: dict[tuple, list] = {}
        for r in ok:
            curves.setdefault((r.params["strategy"], r.params["scaling"]), []).append(r)
        out = []
        for recs in curves.values():
            by_n = {int(r.params["ranks"]): r for r in recs}  # a point run twice (e.g. 2 and "all"): the last
            ns = sorted(by_n)
            if len(ns) < 2:
                continue
            tps = [by_n[n].metrics["tokens_per_s"] for n in ns]
            n0, eff = scaling_efficiency(ns, tps)
            t0 = tps[0]
            fixed = {k: v for k, v in recs[0].params.items()
                     if k not in ("ranks", "batch_per_rank", "global_batch")}
            key = f"{records[0].source}|data_parallel-efficiency|{sorted(fixed.items(), key=str)}"
            rec = ctx.record(
                {"scaling_efficiency_at_max_ranks": eff[-1], "scaling_efficiency_min": min(eff),
                 "throughput_ratio_at_max_ranks": tps[-1] / t0,
                 "max_ranks": float(ns[-1]), "base_ranks": float(n0)},
                params={**fixed, "ranks": None, "efficiency": True},
                samples={"ranks": [float(n) for n in ns], "tokens_per_s": tps, "scaling_efficiency": eff,
                         "ideal_tokens_per_s": [t0 * n / n0 for n in ns],
                         "tokens_per_s_per_rank": [t / n for t, n in zip(tps, ns, strict=True)]},
                info={"efficiency": f"tokens/s at n ranks over (n/{n0}) x tokens/s at {n0} rank(s)"})
            rec.case_id = hashlib.sha1(key.encode()).hexdigest()[:16]
            out.append(rec)
        return out


__all__ = ["DataParallelConfig", "DataParallel", "LossModule", "wrap", "block_list", "comm_intervals", "union_us"]
