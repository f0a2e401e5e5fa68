"""Positional encodings as pure functions: ALiBi slopes, rotary with xPos, interpolation.

Angles are computed in float64 and stored in float32, so positions past 10^5 keep their phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def alibi_slopes(n: int) -> list[float]:
    """ALiBi slopes for n heads (Press et al.).

    n a power of two: start = 2^(-8/n), slope_k = start^(k+1). Otherwise: the slopes of the
    largest power of two m < n, then every other slope of 2m, cut to n.
    """
    if n <= 0:
        raise ValueError(f"alibi_slopes: n must be positive, got {n}")

    def power_of_two(m: int) -> list[float]:
        start = 2.0 ** (-8.0 / m)
        return [start ** (k + 1) for k in range(m)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    m = 2 ** math.floor(math.log2(n))
    return power_of_two(m) + power_of_two(2 * m)[0::2][: n - m]


def head_slopes(heads: int, alibi_heads: int, interpolation_factor: float = 1.0) -> torch.Tensor:
    """(H,) float32 slopes: ALiBi slopes on the first `alibi_heads` heads, zeros on the rest.

    Positional interpolation divides distances by the factor, which is the same as dividing slopes.
    """
    slopes = torch.zeros(heads, dtype=torch.float64)
    if alibi_heads:
        slopes[:alibi_heads] = torch.tensor(alibi_slopes(alibi_heads), dtype=torch.float64)
    return (slopes / interpolation_factor).float()


def rotary_inv_freq(rot_dim: int, theta: float = 10000.0, device: torch.device | str | None = None) -> torch.Tensor:
    """(rot_dim/2,) float64: inv_freq_i = 1 / theta^(2i / rot_dim), built on `device` (no host-to-device copy,
    which would synchronize a queued training step)."""
    i = torch.arange(0, rot_dim, 2, dtype=torch.float64, device=device)
    return 1.0 / theta ** (i / rot_dim)


def xpos_zeta(rot_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(rot_dim/2,) float64: zeta_i = (2i + 0.4 d) / (1.4 d), the per-pair xPos decay base, built on `device`."""
    i = torch.arange(0, rot_dim, 2, dtype=torch.float64, device=device)
    return (i + 0.4 * rot_dim) / (1.4 * rot_dim)


def xpos_max_position(scale_base: float, interpolation_factor: float = 1.0) -> float:
    """The longest span of positions one xPos reference can serve with every score finite in float32.

    Queries are scaled by zeta^((i - c)/base) and keys by zeta^(-(j - c)/base), zeta down to 0.4/1.4. A
    kernel computes (then masks) pairs with j > i too, whose scale product is 3.5^((j - i)/base) whatever c
    is. Keeping it under 1e30 (headroom for |q||k| and the sum over dim) bounds the span by
    base * ln(1e30)/ln(3.5), about 55 * base interpolated positions. `XPos` anchors each block of
    positions this long (or shorter) to its own reference, so no sequence length has a limit.
    """
    return scale_base * math.log(1e30) / math.log(1.4 / 0.4) * interpolation_factor


def xpos_period(scale_base: float, interpolation_factor: float = 1.0, dtype: torch.dtype = torch.float32) -> int:
    """Positions per xPos anchor block (`XPos`): the span `xpos_max_position` allows, rounded down to a
    multiple of 64 (a decode kernel's key tile) where it is that long, and of 128 from 1,024 on: a long
    prefill attends block by block, and the Hopper forward (triton_flash._sm90_fits) takes only whole
    128-row query tiles after whole tiles of earlier keys (the spec default's 28,224 took the Triton forward
    for every block; 28,160 does not). float16 holds the scaled q and k themselves (up to
    3.5^(period / 2 base) at a block's edge), so its blocks are 10 bases long: 3.5^5 ~ 525."""
    span = xpos_max_position(scale_base, interpolation_factor)
    if dtype == torch.float16:
        span = min(span, 10 * scale_base * interpolation_factor)
    span = int(span)
    tile = 128 if span >= 1024 else 64
    return span // tile * tile if span >= 64 else max(span, 1)


@dataclass(frozen=True)
class XPos:
    """xPos of a run of positions, exact and finite at any position: each position is scaled about the
    anchor of its block.

    Pair k of q_i . k_j must carry zeta_k^((p_i - p_j) / base) (at most 1 for j <= i). Positions fall in
    blocks of `period` P (block b = p // P, anchor c_b = b P + P // 2). Queries carry zeta^((p_i - c(p_i))/base)
    (`scale`) and keys zeta^((c(p_j) - p_j)/base) (`inv`, what the KV cache stores), both within
    3.5^(P / 2 base) of 1. A query in block b against keys of the same block gets the exact product; keys of
    an earlier block b' need one more factor zeta^((b - b') P / base) <= 1 (`step`), applied to the query
    (decode: one query, a few key blocks) or to the keys (prefill: `rebase`). Far keys' factors underflow
    towards 0, as their true weights do. Masked pairs (j > i, one block) carry at most 3.5^(P / base), which
    `xpos_period` keeps finite.

    scale, inv: (N, rot_dim) float32; first: the run's first position; period: P; log_step: (rot_dim,)
    float64, ln zeta * P / (base * interpolation), pairs duplicated as in the rotary tables."""

    scale: torch.Tensor
    inv: torch.Tensor
    first: int
    period: int
    log_step: torch.Tensor

    @property
    def length(self) -> int:
        return self.scale.shape[0]

    def blocks(self) -> list[tuple[int, int, int]]:
        """(a, b, block): the run's rows [a, b) of each anchor block it touches, in order."""
        out, a, n = [], 0, self.length
        while a < n:
            blk = (self.first + a) // self.period
            b = min(n, (blk + 1) * self.period - self.first)
            out.append((a, b, blk))
            a = b
        return out

    def step(self, k: torch.Tensor | int) -> torch.Tensor:
        """zeta^(k P / base) for block distances k (...,) >= 0: (..., rot_dim) float32."""
        k = torch.as_tensor(k, dtype=torch.float64, device=self.log_step.device)
        return torch.exp(k[..., None] * self.log_step).float()

    def rebase(self, first: int, n: int, block: int) -> torch.Tensor | None:
        """(n, rot_dim) float32 factors taking the stored keys of positions first .. first + n - 1 to the anchor
        of `block` (none of them past it), or None when they all lie in that block already."""
        if first // self.period == block:
            return None
        blocks = torch.arange(first, first + n, device=self.log_step.device) // self.period
        return self.step(block - blocks)


def anchored_xpos(first: int, n: int, rot_dim: int, scale_base: float, interpolation_factor: float = 1.0, *,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> XPos:
    """The XPos of positions first .. first + n - 1, anchored by `xpos_period` for `dtype`."""
    period = xpos_period(scale_base, interpolation_factor, dtype)
    positions = torch.arange(first, first + n, device=device)
    anchor = positions // period * period + period // 2
    rel = (positions - anchor).to(torch.float64) / interpolation_factor / scale_base  # (N,)
    log_zeta = xpos_zeta(rot_dim, positions.device).log()
    log_zeta = torch.cat([log_zeta, log_zeta])  # (rot_dim,)
    power = rel[:, None] * log_zeta[None, :]
    return XPos(torch.exp(power).float(), torch.exp(-power).float(), first, period,
                log_zeta * (period / interpolation_factor / scale_base))


def rotary_tables(
    positions: torch.Tensor, rot_dim: int, *, theta: float = 10000.0, interpolation_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (N, rot_dim) float32 of (N,) integer positions; interpolation divides them by the factor."""
    pos = positions.to(torch.float64) / interpolation_factor  # (N,)
    angles = pos[:, None] * rotary_inv_freq(rot_dim, theta, pos.device)[None, :]  # (N, r/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, r)
    return angles.cos().float(), angles.sin().float()


def scale_rotated(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """x (..., N, D) with its first rot_dim features multiplied by (N | 1, rot_dim) factors (float32 math)."""
    rot_dim = factors.shape[-1]
    return torch.cat([(x[..., :rot_dim].float() * factors).to(x.dtype), x[..., rot_dim:]], dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate the first rot_dim features of x (..., N, D) by (N, rot_dim) tables; the rest pass.

    `scale` (N, rot_dim) multiplies the rotated features (xPos: `XPos.scale` for queries, `.inv` for keys).
    The arithmetic is float32; the result has x's dtype.
    """
    rot_dim = cos.shape[-1]
    xr, rest = x[..., :rot_dim].float(), x[..., rot_dim:]
    out = xr * cos + _rotate_half(xr) * sin
    if scale is not None:
        out = out * scale
    return torch.cat([out.to(x.dtype), rest], dim=-1)
