"""Context-parallel prefill: one sequence's positions split over the ranks of a process group, exact.

The sequence of N tokens is cut into 2W chunks for W ranks; rank r takes chunks r and 2W - 1 - r, so every
rank holds one early and one late chunk and the causal work is balanced (`layout`). Layer by layer, each rank
runs its chunks through the model's own blocks (`Block.forward`) with a `_Shards` object in place of a KV
cache:

- attention: each chunk's keys (with xPos anchored: `positional.XPos`, as a KV cache stores them), values and
  key norms are all-gathered, once per chunk and layer, into full-length buffers; a chunk's queries attend to
  the keys of positions 0 .. its last (`Attention._attend`: per anchor block, any backend). With one KV head a
  layer's keys and values are small (2.5B preset: 16 MB for 32K tokens), so gathering them is cheap;
- token shift: the last `shift_tokens` normalized rows of every chunk are all-gathered at each shift site, and
  a chunk takes its predecessor's (zeros before position 0);
- ALiBi and xPos need nothing more: each chunk's positions are its own.

Rank order of collectives is the same on every rank (chunk 0, then chunk 1, per layer). Uneven splits pad
the gathered tensors to the longest chunk. The result equals the single-process forward to float rounding:
`prefill` returns this rank's chunks' hidden states or logits, and with `cache` fills a KVCache (on every
rank) with all N positions' keys, values and token-shift state, so decoding continues as after
`model(tokens, cache=cache)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from andromeda.errors import ConfigError
from andromeda.model.cache import KVCache


def layout(n: int, world: int, min_chunk: int = 1) -> list[list[tuple[int, int]]]:
    """For each rank, the [a, b) position ranges of its two chunks (one of 2 * world near-equal chunks from
    each end), in the order it runs them. Every chunk holds at least min_chunk positions."""
    if world < 1 or n < 2 * world * max(min_chunk, 1):
        raise ConfigError(f"context_parallel: {n} tokens cannot be split into 2 x {world} chunks of at least "
                          f"{max(min_chunk, 1)} positions; use fewer ranks or a longer sequence")
    edges = [round(i * n / (2 * world)) for i in range(2 * world + 1)]
    chunk = [(edges[i], edges[i + 1]) for i in range(2 * world)]
    return [[chunk[r], chunk[2 * world - 1 - r]] for r in range(world)]


@dataclass
class _Shards:
    """What the blocks call in place of a KVCache during a context-parallel prefill (see the module doc)."""

    pieces: list[list[tuple[int, int]]]  # every rank's chunks (layout)
    rank: int
    group: object
    depth: int
    start: int = 0  # keys' first position, as KVCache.start
    piece: int = 0  # which of this rank's chunks the blocks are running
    timed: bool = False  # synchronize around each collective and add its time to comm_s (benchmarks)

    def __post_init__(self):
        self.n = max(e for p in self.pieces for _, e in p)
        self.k: list[torch.Tensor | None] = [None] * self.depth
        self.v: list[torch.Tensor | None] = [None] * self.depth
        self.kn: list[torch.Tensor | None] = [None] * self.depth
        self.shift_last: dict[tuple[int, str], torch.Tensor] = {}  # the final chunk's last rows, per site
        self.chunk0_rows: dict[tuple[int, str], dict[int, torch.Tensor]] = {}  # chunk 0s' last rows by end
        self.comm_s = 0.0

    def _gather(self, local: torch.Tensor, dim: int, rows: int | None = None) -> list[torch.Tensor]:
        """Every rank's `local` for the current piece: its chunk's positions along dim (padded to the longest
        chunk, then cut), or `rows` of them from every rank."""
        sizes = [rows or p[self.piece][1] - p[self.piece][0] for p in self.pieces]
        longest = max(sizes)
        pad = list(local.shape)
        pad[dim] = longest - local.shape[dim]
        padded = torch.cat([local, local.new_zeros(pad)], dim=dim) if pad[dim] else local.contiguous()
        out = [torch.empty_like(padded) for _ in self.pieces]
        if self.timed:
            _sync(padded.device)
            t0 = time.perf_counter()
        dist.all_gather(out, padded, group=self.group)
        if self.timed:
            _sync(padded.device)
            self.comm_s += time.perf_counter() - t0
        return [t.narrow(dim, 0, s) for t, s in zip(out, sizes, strict=True)]

    def _place(self, store: list, layer: int, local: torch.Tensor, dim: int) -> torch.Tensor:
        """Gather the piece's rows of every rank into the layer's full-length buffer; the rows up to this
        rank's piece end."""
        parts = self._gather(local, dim)
        if store[layer] is None:
            shape = list(local.shape)
            shape[dim] = self.n
            store[layer] = local.new_zeros(shape)
        for p, part in zip(self.pieces, parts, strict=True):
            a, b = p[self.piece]
            store[layer].narrow(dim, a, b - a).copy_(part)
        end = self.pieces[self.rank][self.piece][1]
        return store[layer].narrow(dim, 0, end)

    # ---- the KV-cache interface the blocks use -------------------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._place(self.k, layer, k, 2), self._place(self.v, layer, v, 2)

    def key_norms(self, layer: int, norms: torch.Tensor) -> torch.Tensor:
        return self._place(self.kn, layer, norms, 2)

    def shift_exchange(self, layer: int, site: str, h: torch.Tensor, s: int) -> torch.Tensor:
        """The s rows before this piece's first position (zeros before position 0), from the rank that holds
        them; h (B, n, dim) is this piece's normalized input."""
        parts = self._gather(h[:, -s:], 1, rows=s)  # (layout: every chunk holds at least s positions)
        ends = {p[self.piece][1]: part for p, part in zip(self.pieces, parts, strict=True)}
        if self.piece == 0:
            self.chunk0_rows[(layer, site)] = ends
        else:  # the second chunks' predecessors: the other second chunks, or the last of the first ones
            ends = {**self.chunk0_rows[(layer, site)], **ends}
        if self.n in ends:
            self.shift_last[(layer, site)] = ends[self.n]
        a = self.pieces[self.rank][self.piece][0]
        return ends[a] if a > 0 else h.new_zeros(h.shape[0], s, h.shape[2])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill(model, tokens: torch.Tensor, *, group=None, cache: KVCache | None = None, logits: str = "last",
            stats: dict | None = None) -> list[tuple[int, int, torch.Tensor]]:
    """Context-parallel forward of tokens (B, N) (the same on every rank) over `group` (default: the world).

    Returns this rank's [(a, b, out)] for its two chunks: out the logits (B, b - a, V) for logits="all", the
    last position's (B, 1, V) where this rank holds position N - 1 (else no entry) for "last", or the final
    hidden states for "none". With `cache` (empty, of at least N positions), every rank's cache ends holding
    all N positions, as after model(tokens, cache=cache). With a `stats` dict, each collective is synchronized
    and timed: stats["comm_s"] is their total on this rank (a benchmark's communication share)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    b, n = tokens.shape
    pieces = layout(n, world, model.cfg.shift_tokens)
    if cache is not None and (cache.length or cache.max_len < n or cache.bits is not None):
        raise ConfigError(f"context_parallel: the cache must be empty, full precision and hold {n} positions")
    model.check_positions(n - 1)
    shards = _Shards(pieces, rank, group, len(model.blocks), timed=stats is not None)
    dtype = cache.dtype if cache is not None else model.head.weight.dtype
    xs, ropes = [], []
    for a, e in pieces[rank]:
        positions = torch.arange(a, e, device=tokens.device)
        xs.append(model.emb_drop(model.embed(tokens[:, a:e], positions)))
        ropes.append(model.rope(a, e - a, tokens.device, dtype))
    for i, blk in enumerate(model.blocks):
        for j in range(2):
            shards.piece = j
            xs[j] = blk(xs[j], ropes[j], model.alibi_slopes, shards, i)
    out = []
    for (a, e), x in zip(pieces[rank], xs, strict=True):
        if logits == "none":
            out.append((a, e, x))
        elif logits == "all":
            out.append((a, e, model.head(model.final_norm(x))))
        elif e == n:
            out.append((e - 1, e, model.head(model.final_norm(x[:, -1:]))))
    if stats is not None:
        stats["comm_s"] = shards.comm_s
    if cache is not None:
        for i in range(len(model.blocks)):
            cache.k[i, :, :, :n] = shards.k[i]
            cache.v[i, :, :, :n] = shards.v[i]
        for (i, site), rows in shards.shift_last.items():
            cache.set_shift_state(i, site, rows)
        cache.advance(n)
    return out


__all__ = ["layout", "prefill"]
