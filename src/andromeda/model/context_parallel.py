"""Context-parallel prefill: one sequence's positions split over the ranks of a process group, exact.

The sequence of N tokens is cut into 2W chunks for W ranks; rank r takes chunks r and 2W - 1 - r, so every
rank holds one early and one late chunk and the causal work is balanced (`layout`). Layer by layer, each rank
runs both its chunks together, one call of each of the model's own blocks (`Block.forward`) for the two, with a
`_Shards` object in place of a KV cache:

- attention: both chunks' keys (with xPos anchored: `positional.XPos`, as a KV cache stores them), values and
  key norms are all-gathered, once per layer, into full-length buffers; each chunk's queries (a run of the
  call's rows, `_Shards.query_runs`) attend to the keys of positions 0 .. its last (`Attention._attend`: per
  anchor block, any backend). With one KV head a layer's keys and values are small (2.5B preset: 16 MB for
  32K tokens), so gathering them is cheap;
- token shift: the last `shift_tokens` normalized rows of every chunk are all-gathered at each shift site, and
  each chunk takes its predecessor's (zeros before position 0);
- ALiBi and xPos need nothing more: each chunk's positions are its own.

One call for both chunks means one collective per exchange and layer, so the ranks wait for each other once
per exchange on their whole work (early and late chunk together), which the layout balances; and half the
kernel launches of running the chunks apart. Uneven splits pad the gathered tensors to the rank holding the
most positions. The result equals the single-process forward to float rounding:
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
from andromeda.model.positional import XPos


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
    """What the blocks call in place of a KVCache during a context-parallel prefill (see the module doc). Each
    block call holds both of this rank's chunks, one after the other (`runs`), so every exchange gathers both."""

    pieces: list[list[tuple[int, int]]]  # every rank's chunks (layout)
    rank: int
    group: object
    depth: int
    start: int = 0  # keys' first position, as KVCache.start
    timed: bool = False  # synchronize around each collective and add its time to comm_s (benchmarks)

    def __post_init__(self):
        self.n = max(e for p in self.pieces for _, e in p)
        self.k: list[torch.Tensor | None] = [None] * self.depth
        self.v: list[torch.Tensor | None] = [None] * self.depth
        self.kn: list[torch.Tensor | None] = [None] * self.depth
        self.shift_last: dict[tuple[int, str], torch.Tensor] = {}  # the final chunk's last rows, per site
        self.rows = [sum(e - a for a, e in p) for p in self.pieces]  # positions each rank holds
        own = self.pieces[self.rank]
        self.runs = [(0, own[0][1] - own[0][0]), (own[0][1] - own[0][0], self.rows[self.rank])]  # rows in a call
        self.query_runs: list[tuple] | None = None  # (a, b, key end, XPos) per run, for Attention (set by prefill)
        self.comm_s = 0.0

    def _gather(self, local: torch.Tensor, dim: int, sizes: list[int]) -> list[torch.Tensor]:
        """Every rank's `local` (sizes[r] rows along dim on rank r), padded to the largest for one all-gather."""
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
        """Gather both chunks' rows of every rank into the layer's full-length buffer; the rows up to this rank's
        last chunk end."""
        parts = self._gather(local, dim, self.rows)
        if store[layer] is None:
            shape = list(local.shape)
            shape[dim] = self.n
            store[layer] = local.new_zeros(shape)
        for p, part in zip(self.pieces, parts, strict=True):
            at = 0
            for a, b in p:
                store[layer].narrow(dim, a, b - a).copy_(part.narrow(dim, at, b - a))
                at += b - a
        end = max(e for _, e in self.pieces[self.rank])
        return store[layer].narrow(dim, 0, end)

    # ---- the KV-cache interface the blocks use -------------------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._place(self.k, layer, k, 2), self._place(self.v, layer, v, 2)

    def key_norms(self, layer: int, norms: torch.Tensor) -> torch.Tensor:
        return self._place(self.kn, layer, norms, 2)

    def shift_exchange(self, layer: int, site: str, h: torch.Tensor, s: int) -> list[tuple]:
        """(a, b, the s rows before position a) for each run [a, b) of h (B, rows, dim), this call's normalized
        input: the rows come from the rank that holds them (zeros before position 0)."""
        local = torch.cat([h[:, b - s:b] for _, b in self.runs], dim=1)  # (layout: every chunk holds >= s rows)
        parts = self._gather(local, 1, [2 * s] * len(self.pieces))
        ends = {e: part[:, j * s:(j + 1) * s] for p, part in zip(self.pieces, parts, strict=True)
                for j, (_, e) in enumerate(p)}
        self.shift_last[(layer, site)] = ends[self.n]
        return [(a, b, ends[pa] if pa > 0 else h.new_zeros(h.shape[0], s, h.shape[2]))
                for (a, b), (pa, _) in zip(self.runs, self.pieces[self.rank], strict=True)]


def _joined(ropes: list) -> tuple | None:
    """One Rope for the rows of several runs of positions: their cos, sin and xPos scales stacked (Attention's
    rotary takes them row by row; each run attends with its own XPos, `_Shards.query_runs`)."""
    if ropes[0] is None:
        return None
    cos, sin = (torch.cat([r[i] for r in ropes]) for i in (0, 1))
    xp = [r[2] for r in ropes]
    if xp[0] is None:
        return cos, sin, None
    return cos, sin, XPos(torch.cat([x.scale for x in xp]), torch.cat([x.inv for x in xp]), xp[0].first,
                          xp[0].period, xp[0].log_step)


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
    rope = _joined(ropes)
    shards.query_runs = [(a, b, e, None if r is None else r[2])
                         for (a, b), (_, e), r in zip(shards.runs, pieces[rank], ropes, strict=True)]
    x = torch.cat(xs, dim=1)  # both chunks in one call a block
    for i, blk in enumerate(model.blocks):
        x = blk(x, rope, model.alibi_slopes, shards, i)
    xs = [x[:, a:b] for a, b in shards.runs]
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
