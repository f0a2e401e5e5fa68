"""What the scenarios that run across processes (collectives, data_parallel, load_balance, context_parallel)
share: which rank this process is (dist_of), timing with the same number of runs on every rank
(fixed_count_timing), and a barrier outside timed regions. The torchrun worker (runs/worker.py) puts a
DistInfo in ctx.extra["dist"]."""

from __future__ import annotations

from dataclasses import dataclass, replace

from andromeda.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the launch: its global and local rank, the world size, backend and host."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    host: str


def dist_of(ctx) -> DistInfo:
    info = ctx.extra.get("dist")
    if info is None:
        raise ConfigError(f"scenario '{ctx.case.scenario}' runs across processes: add "
                          "`launcher: {type: torchrun, nproc: N}` to the manifest")
    return info


def fixed_count_timing(ctx, warmup: int, iters: int):
    """The run's timing settings with exactly `warmup` + `iters` runs on every rank."""
    return replace(ctx.timing, warmup=warmup, warmup_s=0.0, min_runs=iters, max_runs=iters, budget_s=1e12,
                   target_rel_ci=None, cuda_graph=False)


def barrier(device) -> None:
    """All ranks line up (outside any timed region); NCCL's barrier blocks the host until done."""
    import torch.distributed as dist

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


__all__ = ["DistInfo", "dist_of", "fixed_count_timing", "barrier"]
