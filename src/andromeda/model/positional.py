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


def rotary_inv_freq(rot_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(rot_dim/2,) float64: inv_freq_i = 1 / theta^(2i / rot_dim)."""
    i = torch.arange(0, rot_dim, 2, dtype=torch.float64)
    return 1.0 / theta ** (i / rot_dim)


def xpos_zeta(rot_dim: int) -> torch.Tensor:
    """(rot_dim/2,) float64: zeta_i = (2i + 0.4 d) / (1.4 d), the per-pair xPos decay base."""
    i = torch.arange(0, rot_dim, 2, dtype=torch.float64)
    return (i + 0.4 * rot_dim) / (1.4 * rot_dim)


def xpos_max_position(scale_base: float, interpolation_factor: float = 1.0) -> float:
    """The last position xPos can reach with every score finite in float32.

    Queries are scaled by zeta^((i - c)/base) and keys by zeta^(-(j - c)/base), zeta down to
    0.4/1.4. A kernel computes (then masks) pairs with j > i too, whose scale product is
    3.5^((j - i)/base) whatever c is: from key 0 to position p it reaches 3.5^(p/base). Keeping it
    under 1e30 (headroom for |q||k| and the sum over dim) bounds p by base * ln(1e30)/ln(3.5),
    about 55 * base interpolated positions; past it attention would turn to inf/NaN.
    """
    return scale_base * math.log(1e30) / math.log(1.4 / 0.4) * interpolation_factor


def xpos_chunk(scale_base: float, interpolation_factor: float = 1.0) -> int:
    """Queries per chunk of `RelativeXPos`: the longest span whose scales stay finite in float32 (a chunk's
    masked pairs carry up to 3.5^(span / base), as in xpos_max_position), rounded down to a multiple of 256
    positions where it is that long."""
    span = int(xpos_max_position(scale_base, interpolation_factor))
    return span // 256 * 256 if span >= 256 else max(span, 1)


@dataclass(frozen=True)
class RelativeXPos:
    """xPos for a whole sequence (no cache), exact at any position: applied per chunk of queries.

    Pair k of q_i . k_j must carry zeta_k^((p_i - p_j) / base) (at most 1 for j <= i). A fixed centre c
    splits it into zeta^((p_i - c)/base) on q and zeta^(-(p_j - c)/base) on k, and the key factor overflows
    float32 once p_j - c passes ~55 bases. Here each chunk of queries [a, b) takes its own reference
    r = p_a: queries carry zeta^((p_i - r)/base) <= 1 and keys zeta^((r - p_j)/base), <= 1 for keys before
    the chunk (far keys underflow towards 0, as their true weight does) and at most 3.5^(chunk/base) inside
    it, which `xpos_chunk` keeps finite. The product is the same zeta^((p_i - p_j)/base) for every pair.

    power: (N,) float64 interpolated positions / base; log_zeta: (rot_dim,) float64, ln zeta per rotated
    feature (pairs duplicated, as the rotary tables); chunk: queries per chunk."""

    power: torch.Tensor
    log_zeta: torch.Tensor
    chunk: int

    @property
    def length(self) -> int:
        return self.power.numel()

    def bounds(self) -> list[tuple[int, int]]:
        """The chunks' [a, b) query ranges."""
        return [(a, min(a + self.chunk, self.length)) for a in range(0, self.length, self.chunk)]

    def scale(self, a: int, b: int, ref: int, keys: bool = False) -> torch.Tensor:
        """(b - a, rot_dim) float32 factors of positions a..b-1 relative to position index `ref`:
        zeta^(power - power[ref]) for queries, zeta^(power[ref] - power) for keys (computed as such, never as
        a reciprocal, so a far key's factor underflows instead of a query's overflowing)."""
        rel = self.power[a:b] - self.power[ref]
        return torch.exp((-rel if keys else rel)[:, None] * self.log_zeta[None, :]).float()


def relative_xpos(positions: torch.Tensor, rot_dim: int, scale_base: float,
                  interpolation_factor: float = 1.0) -> RelativeXPos:
    """The RelativeXPos of (N,) integer positions."""
    pos = positions.to(torch.float64) / interpolation_factor
    log_zeta = xpos_zeta(rot_dim).log().to(pos.device)
    return RelativeXPos(pos / scale_base, torch.cat([log_zeta, log_zeta]),
                        xpos_chunk(scale_base, interpolation_factor))


def rotary_tables(
    positions: torch.Tensor,
    rot_dim: int,
    *,
    theta: float = 10000.0,
    interpolation_factor: float = 1.0,
    xpos: bool = False,
    xpos_scale_base: float = 512.0,
    xpos_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """cos, sin (N, rot_dim) and the xPos query scale (N, rot_dim) or None, all float32.

    positions: (N,) integer positions. Interpolation divides them by the factor. xPos scales
    queries by zeta^((pos - c) / scale_base) and keys by its inverse; c is a fixed offset.
    """
    pos = positions.to(torch.float64) / interpolation_factor  # (N,)
    angles = pos[:, None] * rotary_inv_freq(rot_dim, theta).to(pos.device)[None, :]  # (N, r/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, r)
    scale = None
    if xpos:
        power = (pos - xpos_offset) / xpos_scale_base  # (N,)
        zeta = xpos_zeta(rot_dim).to(pos.device)
        scale = zeta[None, :] ** power[:, None]  # (N, r/2)
        scale = torch.cat([scale, scale], dim=-1).float()
    return angles.cos().float(), angles.sin().float(), scale


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate the first rot_dim features of x (..., N, D) by (N, rot_dim) tables; the rest pass.

    `scale` multiplies the rotated features (xPos: the table for queries, its inverse for keys).
    The arithmetic is float32; the result has x's dtype.
    """
    rot_dim = cos.shape[-1]
    xr, rest = x[..., :rot_dim].float(), x[..., rot_dim:]
    out = xr * cos + _rotate_half(xr) * sin
    if scale is not None:
        out = out * scale
    return torch.cat([out.to(x.dtype), rest], dim=-1)
