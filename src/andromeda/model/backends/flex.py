"""FlexAttention: ALiBi as a score_mod, causal as a block mask built from block indices.

The causal block mask is assembled from per-block-row indices (O((N/128)^2) integers), never
from an N x N tensor, so it scales to long contexts. On CUDA the kernel is compiled once per
process; on CPU FlexAttention runs unfused (correct, for tests).
"""

from __future__ import annotations

import functools
import warnings

import torch

from andromeda.model.backends import register

BLOCK = 128


def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(_flex(), dynamic=False)


def _causal_mod(offset: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return mask_mod


@functools.lru_cache(maxsize=32)
def causal_block_mask(n: int, device_str: str):
    """Causal BlockMask for Nq == Nk == n: block row r has full blocks 0..r-1 and partial block r."""
    from torch.nn.attention.flex_attention import BlockMask

    device = torch.device(device_str)
    nb = -(-n // BLOCK)
    rows = torch.arange(nb, device=device, dtype=torch.int32)
    cols = torch.arange(nb, device=device, dtype=torch.int32)
    kv_num = torch.ones(1, 1, nb, device=device, dtype=torch.int32)  # the diagonal block
    kv_idx = rows[:, None].expand(nb, nb).contiguous()[None, None]  # (1, 1, nb, nb), first column used
    full_num = rows.clone()[None, None]  # r full blocks before the diagonal
    full_idx = cols[None, :].expand(nb, nb).contiguous()[None, None]  # 0..r-1 in the first r columns
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=_causal_mod(0), seq_lengths=(n, n)
    )


def _offset_block_mask(n_q: int, n_k: int, device: torch.device):
    """Causal mask for Nq < Nk (cached decoding): small, so built by create_block_mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_causal_mod(n_k - n_q), None, None, n_q, n_k, device=device)


@register("flex")
class FlexAttention:
    def supports(self, spec, device) -> str | None:
        try:
            _flex()
        except ImportError:
            return "torch.nn.attention.flex_attention is not available in this torch build"
        if spec.dim_head < 16 and device.type == "cuda":
            return f"FlexAttention's CUDA kernel needs dim_head >= 16, got {spec.dim_head}"
        return None

    def __call__(self, q, k, v, *, causal, scale, alibi_slopes):
        n_q, n_k = q.shape[2], k.shape[2]
        offset = n_k - n_q
        score_mod = None
        if alibi_slopes is not None:
            slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)

            if causal:

                def score_mod(score, b, h, q_idx, kv_idx):
                    return score - slopes[h] * (q_idx + offset - kv_idx)
            else:

                def score_mod(score, b, h, q_idx, kv_idx):
                    return score - slopes[h] * (q_idx + offset - kv_idx).abs()

        block_mask = None
        if causal:
            block_mask = (
                causal_block_mask(n_q, str(q.device)) if n_q == n_k else _offset_block_mask(n_q, n_k, q.device)
            )
        gqa = q.shape[1] != k.shape[1]
        if q.device.type == "cuda":
            return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        with warnings.catch_warnings():  # the unfused CPU path is expected here; its warning is noise
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
