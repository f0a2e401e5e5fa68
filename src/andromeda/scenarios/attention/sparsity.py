"""Attention sparsity patterns: token-level masks, exact pair and block counts, FlexAttention block masks.

A pattern says which (query q, key k) pairs are computed; d = q - k, positions 0-based. Every pattern
is intersected with the causal mask (d >= 0) when causal:

  dense           every pair
  sliding_window  |d| < window                                   (window keys per side, the query included)
  dilated         |d| < window * dilation and d % dilation == 0  (window keys per side, `dilation` apart)
  bigbird         |qb - kb| <= r  or  k < global_tokens  or  q < global_tokens  or  kb in R(qb)
                  with qb = q // block, kb = k // block, r = max(1, window // block) local blocks per side,
                  R(qb) = `random_blocks` key blocks drawn (seeded) outside the local band
  block_sparse    layout[q * L // N][k * L // N] == 1: an L x L 0/1 layout stretched over the N x N scores

Nothing here builds an N x N tensor unless asked to (`dense_mask`, for eager/SDPA on short sequences):
pair and block counts come from evaluating the mask one strip of query rows at a time, and the
FlexAttention BlockMask is assembled from block indices (`BlockMask.from_kv_blocks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

PATTERNS = ("dense", "sliding_window", "bigbird", "dilated", "block_sparse")
_CHUNK_ELEMS = 1 << 24  # mask elements evaluated at once when counting (16M bools, ~128 MiB of int64 temporaries)

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PatternSpec:
    """A sparsity pattern, independent of the sequence length."""

    name: str = "dense"
    causal: bool = True
    window: int = 256
    dilation: int = 2
    global_tokens: int = 0
    random_blocks: int = 0
    block_size: int = 128
    layout: tuple[tuple[int, ...], ...] | None = None
    seed: int = 0

    @property
    def sparse(self) -> bool:
        return self.name != "dense"

    def check(self, n: int) -> str | None:
        """Why this pattern cannot be built for length n, or None."""
        if self.name not in PATTERNS:
            return f"pattern '{self.name}' is unknown; available: {', '.join(PATTERNS)}"
        if self.name == "block_sparse":
            if not self.layout:
                return "pattern block_sparse needs a layout (an L x L matrix of 0/1)"
            if n < len(self.layout):
                return f"seq_len {n} is shorter than the layout's {len(self.layout)} rows"
        return None


def baseline_pairs(n: int, causal: bool) -> int:
    """(query, key) pairs of dense attention: N(N+1)/2 causal, N^2 otherwise."""
    return n * (n + 1) // 2 if causal else n * n


def baseline_blocks(n: int, block: int, causal: bool) -> int:
    """Blocks dense attention computes: nb(nb+1)/2 causal, nb^2 otherwise, nb = ceil(N / block)."""
    nb = -(-n // block)
    return nb * (nb + 1) // 2 if causal else nb * nb


def random_block_table(nb: int, radius: int, count: int, causal: bool, seed: int) -> torch.Tensor:
    """(nb, nb) bool, CPU: `count` key blocks per query block, drawn uniformly (seeded) among the
    blocks outside the local band |qb - kb| <= radius (and kb <= qb when causal); fewer where fewer exist."""
    qb = torch.arange(nb)[:, None]
    kb = torch.arange(nb)[None, :]
    cand = (qb - kb).abs() > radius
    if causal:
        cand &= kb <= qb
    table = torch.zeros(nb, nb, dtype=torch.bool)
    if count <= 0 or nb == 0:
        return table
    score = torch.rand(nb, nb, generator=torch.Generator().manual_seed(seed)).masked_fill(~cand, -1.0)
    top = score.topk(min(count, nb), dim=-1).indices  # (nb, count)
    return table.scatter(1, top, True) & cand


def make_mask_mod(spec: PatternSpec, n: int, device: torch.device) -> tuple[MaskMod, torch.Tensor | None]:
    """The pattern as a FlexAttention mask_mod (b, h, q_idx, kv_idx) -> keep, and its random block table.

    The same function is evaluated by FlexAttention (scalar indices) and by the counting code here
    (broadcast (rows, 1) x (1, cols) index grids), so the kernel and the statistics cannot disagree.
    """
    causal, w, bs = spec.causal, spec.window, spec.block_size

    def with_causal(keep: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return keep & (q >= k) if causal else keep

    table = None
    if spec.name == "dense":

        def mask_mod(b, h, q, k):
            d = q - k
            return d >= 0 if causal else d == d

    elif spec.name == "sliding_window":

        def mask_mod(b, h, q, k):
            return with_causal((q - k).abs() < w, q, k)

    elif spec.name == "dilated":
        dil = spec.dilation

        def mask_mod(b, h, q, k):
            d = q - k
            return with_causal((d.abs() < w * dil) & (d % dil == 0), q, k)

    elif spec.name == "bigbird":
        nb = -(-n // bs)
        radius = max(1, w // bs)
        g = spec.global_tokens
        table = random_block_table(nb, radius, spec.random_blocks, causal, spec.seed).to(device)

        def mask_mod(b, h, q, k):
            qb, kb = q // bs, k // bs
            keep = ((qb - kb).abs() <= radius) | (k < g) | (q < g) | table[qb, kb]
            return with_causal(keep, q, k)

    elif spec.name == "block_sparse":
        lay = torch.tensor(spec.layout, dtype=torch.bool, device=device)  # (L, L)
        cells = lay.shape[0]

        def mask_mod(b, h, q, k):
            # clamp: FlexAttention evaluates padded positions past N in a partial last block
            keep = lay[(q * cells // n).clamp(max=cells - 1), (k * cells // n).clamp(max=cells - 1)]
            return with_causal(keep, q, k)

    else:
        raise ValueError(spec.check(n))
    return mask_mod, table


def block_counts(mask_mod: MaskMod, n: int, block: int, device: torch.device) -> torch.Tensor:
    """(nb, nb) int64: kept pairs in each (query block, key block), counted a strip of rows at a time."""
    nb = -(-n // block)
    keys = torch.arange(nb * block, device=device)
    key_ok = keys < n
    rows = max(1, _CHUNK_ELEMS // (nb * block * block)) * block
    zero = torch.zeros((), dtype=torch.int64, device=device)
    strips = []
    for r0 in range(0, nb * block, rows):
        q = torch.arange(r0, min(r0 + rows, nb * block), device=device)
        keep = mask_mod(zero, zero, q[:, None], keys[None, :]) & key_ok[None, :] & (q < n)[:, None]
        strips.append(keep.view(-1, block, nb, block).sum(dim=(1, 3)))  # (rows / block, nb)
    return torch.cat(strips)


def _kv_blocks(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nb, nb) bool -> (1, 1, nb) counts and (1, 1, nb, nb) indices, the selected blocks first."""
    num = sel.sum(-1).to(torch.int32)
    idx = torch.argsort((~sel).to(torch.int32), dim=-1, stable=True).to(torch.int32)
    return num[None, None].contiguous(), idx[None, None].contiguous()


class Pattern:
    """A pattern at one sequence length on one device: mask_mod, exact counts, block mask."""

    def __init__(self, spec: PatternSpec, n: int, device: torch.device):
        reason = spec.check(n)
        if reason is not None:
            raise ValueError(reason)
        self.spec, self.n, self.device = spec, n, torch.device(device)
        with torch.inference_mode(False), torch.no_grad():
            self.mask_mod, self.random_table = make_mask_mod(spec, n, self.device)
            counts = block_counts(self.mask_mod, n, spec.block_size, self.device)  # (nb, nb)
        bs = spec.block_size
        self.full = counts == bs * bs  # only whole interior blocks can be full: edge blocks stay masked
        self.partial = (counts > 0) & ~self.full
        self.pairs = int(counts.sum())
        self.blocks_full = int(self.full.sum())
        self.blocks_partial = int(self.partial.sum())
        self.blocks_computed = self.blocks_full + self.blocks_partial
        self.blocks_total = counts.numel()
        self._block_mask = None

    @property
    def baseline_pairs(self) -> int:
        return baseline_pairs(self.n, self.spec.causal)

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (causal or full) pattern's pairs this pattern removes."""
        return 1.0 - self.pairs / self.baseline_pairs

    @property
    def block_sparsity(self) -> float:
        """Fraction of the dense (causal or full) pattern's blocks this pattern skips entirely."""
        return 1.0 - self.blocks_computed / baseline_blocks(self.n, self.spec.block_size, self.spec.causal)

    def keep_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), N) bool: the mask on the given query rows only."""
        zero = torch.zeros((), dtype=torch.int64, device=self.device)
        keys = torch.arange(self.n, device=self.device)
        return self.mask_mod(zero, zero, rows.to(self.device)[:, None], keys[None, :])

    def dense_mask(self) -> torch.Tensor:
        """(N, N) bool, materialized: only for the short sequences eager/SDPA take a dense mask on."""
        return self.keep_rows(torch.arange(self.n, device=self.device))

    def block_mask(self):
        """FlexAttention BlockMask from block indices: full blocks skip mask_mod, empty blocks are skipped."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import BlockMask

            with torch.inference_mode(False):
                kv_num, kv_idx = _kv_blocks(self.partial)
                full_num, full_idx = _kv_blocks(self.full)
                self._block_mask = BlockMask.from_kv_blocks(
                    kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=self.spec.block_size,
                    mask_mod=self.mask_mod, seq_lengths=(self.n, self.n),
                )
        return self._block_mask


@functools.lru_cache(maxsize=8)
def _cached(spec: PatternSpec, n: int, device: str) -> Pattern:
    return Pattern(spec, n, torch.device(device))


def get_pattern(spec: PatternSpec, n: int, device: torch.device | str) -> Pattern:
    """The Pattern for (spec, n, device), cached: implementations of one shape share its mask_mod
    (FlexAttention traces or compiles once per mask_mod) and its counts."""
    return _cached(spec, n, str(torch.device(device)))


__all__ = [
    "PATTERNS", "PatternSpec", "Pattern", "get_pattern", "make_mask_mod", "block_counts", "random_block_table",
    "baseline_pairs", "baseline_blocks",
]
