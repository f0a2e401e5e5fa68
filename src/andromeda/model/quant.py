"""Symmetric per-group integer quantization for KV caches: int8, and int4 packed two per byte.

A group is `group` consecutive features of one vector; its scale is absmax / qmax, so every
element round-trips within scale / 2 (qmax = 127 for int8, 7 for int4).
"""

from __future__ import annotations

import torch

QMAX = {8: 127, 4: 7}


def quantize(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) -> (codes, scales). int8: codes (..., D) int8. int4: (..., D/2) uint8, two codes a byte.

    scales (..., D/group) float32.
    """
    *lead, d = x.shape
    g = x.float().reshape(*lead, d // group, group)  # (..., G, group)
    scale = g.abs().amax(dim=-1).clamp_min(1e-12) / QMAX[bits]  # (..., G)
    q = torch.round(g / scale[..., None]).clamp_(-QMAX[bits] - 1, QMAX[bits]).reshape(*lead, d)
    if bits == 8:
        return q.to(torch.int8), scale
    u = (q + 8).to(torch.uint8)  # 0..15
    return u[..., 0::2] | (u[..., 1::2] << 4), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int, group: int, dtype: torch.dtype) -> torch.Tensor:
    if bits == 8:
        q = codes.float()
    else:
        low, high = (codes & 0x0F).float() - 8, (codes >> 4).float() - 8
        q = torch.stack([low, high], dim=-1).flatten(-2)  # (..., D)
    *lead, d = q.shape
    return (q.reshape(*lead, d // group, group) * scale[..., None]).reshape(*lead, d).to(dtype)
