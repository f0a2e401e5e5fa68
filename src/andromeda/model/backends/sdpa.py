"""PyTorch scaled_dot_product_attention.

MQA/GQA go through `enable_gqa` (no K/V copy). ALiBi goes in as an additive float mask, which is
exact but O(Nq * Nk) memory and rules out the fused flash/cuDNN kernels; without ALiBi a causal
call with Nq == Nk uses `is_causal` and the fused kernels.
"""

from __future__ import annotations

import torch.nn.functional as F

from andromeda.model.backends.masks import alibi_bias, causal_keep
from andromeda.model.backends.registry import register


@register("sdpa")
class SDPAttention:
    def supports(self, spec, device) -> str | None:
        return None

    def __call__(self, q, k, v, *, causal, scale, alibi_slopes):
        n_q, n_k = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        mask, is_causal = None, False
        if alibi_slopes is not None:
            mask = alibi_bias(alibi_slopes, n_q, n_k, causal).to(q.dtype)[None]  # (1, H, Nq, Nk)
            if causal:
                mask = mask.masked_fill(~causal_keep(n_q, n_k, q.device), float("-inf"))
        elif causal and n_q == n_k:
            is_causal = True
        elif causal and n_q > 1:
            mask = causal_keep(n_q, n_k, q.device)  # bottom-right; SDPA's is_causal is top-left
        # causal with a single query attends to every cached key: no mask needed
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )
