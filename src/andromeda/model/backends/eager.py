"""The reference backend: explicit softmax in float32, ALiBi from slopes, K/V expanded per group."""

from __future__ import annotations

import torch

from andromeda.model.backends.masks import alibi_bias, causal_keep
from andromeda.model.backends.registry import register


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, alibi_slopes: torch.Tensor | None
) -> torch.Tensor:
    """(B, H, Nq, Nk) float32 attention probabilities, materialized."""
    heads, kv_heads = q.shape[1], k.shape[1]
    n_q, n_k = q.shape[2], k.shape[2]
    kf = k.float().repeat_interleave(heads // kv_heads, dim=1)  # (B, H, Nk, D)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if alibi_slopes is not None:
        scores = scores + alibi_bias(alibi_slopes, n_q, n_k, causal)[None]
    if causal:
        scores = scores.masked_fill(~causal_keep(n_q, n_k, q.device), float("-inf"))
    return scores.softmax(dim=-1)


@register("eager")
class EagerAttention:
    def supports(self, spec, device) -> str | None:
        return None

    def __call__(self, q, k, v, *, causal, scale, alibi_slopes):
        probs = attention_probs(q, k, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
        vf = v.float().repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # (B, H, Nk, D)
        return (probs @ vf).to(q.dtype)  # (B, H, Nq, D)
