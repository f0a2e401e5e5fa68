"""The tiles our attention kernels compute, counted while `count_blocks()` is active.

A benchmark divides the FLOPs of the tiles a kernel actually ran by its time for the kernel's actual
arithmetic rate, beside the effective rate (the dense causal FLOPs over the same time). Counting is off by
default and the kernels compile it out (a constexpr flag), so timed launches are unchanged; a benchmark
counts in a separate, untimed call with the same inputs (the kernels' skipping is deterministic).

A tile's FLOPs are those of its whole (rows x keys) block, masked entries of diagonal tiles included:
forward 4 r k d (q k^T, p v); the dQ kernel 6 r k d (q k^T, dO v^T, dS k); the dK/dV kernel 8 r k d
(q k^T, p^T dO, dO v^T, dS^T q).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

MATMULS = {"forward": 2, "dq": 3, "dkdv": 4}  # matrix products per tile of each kernel
PASS = {"forward": "forward", "dq": "backward", "dkdv": "backward"}


@dataclass
class BlockCount:
    """Per kernel ("forward", "dq", "dkdv"): device counters of tiles and each tile's FLOPs."""

    parts: list[tuple[str, torch.Tensor, float]] = field(default_factory=list)

    def counter(self, kernel: str, device: torch.device, rows: int, keys: int, d: int) -> torch.Tensor:
        """A fresh int64 counter (1,) for one launch of `kernel` with (rows x keys) tiles of head dim d."""
        c = torch.zeros(1, dtype=torch.int64, device=device)
        self.parts.append((kernel, c, 2.0 * MATMULS[kernel] * rows * keys * d))
        return c

    def add(self, kernel: str, tiles: torch.Tensor | int, rows: int, keys: int, d: int) -> None:
        """Tiles counted outside a kernel (the Hopper forward's, from the first-block table it reads)."""
        t = torch.as_tensor(tiles, dtype=torch.int64).reshape(1)
        self.parts.append((kernel, t, 2.0 * MATMULS[kernel] * rows * keys * d))

    def tiles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kernel, c, _ in self.parts:
            out[kernel] = out.get(kernel, 0) + int(c.item())
        return out

    def flops(self) -> dict[str, float]:
        """FLOPs of the computed tiles per pass: {"forward": ..., "backward": ...} (passes that ran)."""
        out: dict[str, float] = {}
        for kernel, c, per_tile in self.parts:
            out[PASS[kernel]] = out.get(PASS[kernel], 0.0) + int(c.item()) * per_tile
        return out


_ACTIVE: contextvars.ContextVar[BlockCount | None] = contextvars.ContextVar("andromeda_block_count", default=None)


def active() -> BlockCount | None:
    """The BlockCount of the innermost `count_blocks()`, or None (counting off)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def count_blocks() -> Iterator[BlockCount]:
    """Count the tiles of every triton-backend attention launch inside the block, and of the backward of a
    forward that ran inside it (wherever autograd runs that backward)."""
    count = BlockCount()
    token = _ACTIVE.set(count)
    try:
        yield count
    finally:
        _ACTIVE.reset(token)
