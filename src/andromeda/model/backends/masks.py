"""Position arithmetic shared by backends that take explicit masks or biases."""

from __future__ import annotations

import torch


def relative_positions(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """(Nq, Nk) int64: i - j, where the Nq queries are the last Nq of the Nk positions."""
    q_pos = torch.arange(n_k - n_q, n_k, device=device)
    k_pos = torch.arange(n_k, device=device)
    return q_pos[:, None] - k_pos[None, :]


def causal_keep(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """(Nq, Nk) bool: True where key j <= query i (bottom-right aligned)."""
    return relative_positions(n_q, n_k, device) >= 0


def alibi_bias(slopes: torch.Tensor, n_q: int, n_k: int, causal: bool) -> torch.Tensor:
    """(H, Nq, Nk) float32: -slope_h * (i - j); |i - j| when not causal."""
    dist = relative_positions(n_q, n_k, slopes.device).float()  # (Nq, Nk)
    if not causal:
        dist = dist.abs()
    return -slopes.float()[:, None, None] * dist[None]
