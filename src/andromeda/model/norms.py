"""Normalization: LayerNorm / RMSNorm, QK-norm with optional dim scale, DeepNorm constants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}'")


class QKNorm(nn.Module):
    """L2-normalize each head's vectors; with dim_scale, multiply by learned per-head gains.

    Input (B, H, N, D). Gains are (H, 1, D), initialised to 1.
    """

    def __init__(self, heads: int, dim_head: int, dim_scale: bool, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(heads, 1, dim_head)) if dim_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1, eps=self.eps).to(x.dtype)  # (B, H, N, D)
        if self.gain is not None:
            x = x * self.gain.to(x.dtype)
        return x


def deepnorm_alpha(depth: int) -> float:
    """Residual scale for a decoder of `depth` layers: (2N)^(1/4)."""
    return (2 * depth) ** 0.25


def deepnorm_beta(depth: int) -> float:
    """Init gain for feed-forward, value and output projections: (8N)^(-1/4)."""
    return (8 * depth) ** -0.25
