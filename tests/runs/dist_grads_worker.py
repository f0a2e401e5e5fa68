"""torchrun worker for tests/runs/test_distributed.py: one DDP and one FSDP2 training step of the
tiny model on this rank's half of a fixed batch, wrapped as the data_parallel scenario wraps it.
Rank 0 saves every rank's full gradient (all-gathered) to OUT for the test to compare against a
single-process reference. Not a test module itself (no test_ prefix)."""

import os
import sys

import torch
import torch.distributed as dist

from andromeda.scenarios.data_parallel import wrap
from andromeda.sources.models import build

PER_RANK, SEQ = 2, 32


def full_grads(params) -> torch.Tensor:
    """This rank's gradient of every parameter, as one flat vector (FSDP2 shards made whole)."""
    parts = []
    for p in params:
        g = p.grad
        if hasattr(g, "full_tensor"):
            g = g.full_tensor()
        parts.append(g.detach().flatten())
    return torch.cat(parts)


def step(strategy: str, tokens: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(0)
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    bundle.model.train()
    module, loss_fn = wrap(bundle, strategy, torch.device("cpu"))
    loss_fn(tokens).backward()
    mine = full_grads(bundle.model.parameters())
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return every


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = torch.randint(0, 256, (PER_RANK * world, SEQ), generator=torch.Generator().manual_seed(1))
    mine = batch[rank * PER_RANK:(rank + 1) * PER_RANK]
    result = {"batch": batch, "ddp": step("ddp", mine), "fsdp": step("fsdp", mine)}
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as the launcher's worker does: no interpreter teardown, whose thread clean-up can abort
