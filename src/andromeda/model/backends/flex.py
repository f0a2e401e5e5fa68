"""FlexAttention: ALiBi as a score_mod, causal as a block mask built from block indices.

The causal block mask is assembled from per-block-row indices (O((N/128)^2) integers), never
from an N x N tensor, so it scales to long contexts. On CUDA the kernel is compiled once per
process; on CPU FlexAttention runs unfused (correct, for tests).
"""

from __future__ import annotations

import functools
import warnings

import torch

from andromeda.model.backends.eager import EagerAttention
from andromeda.model.backends.registry import register
from andromeda.model.backends.sdpa import SDPAttention

_sdpa = SDPAttention()
_eager = EagerAttention()

BLOCK = 128


def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    # dynamic=False: one static kernel per shape. With dynamic=None a second length recompiled with
    # dynamic shapes, and that kernel ran Andromeda's 8K attention at 255 TFLOP/s against 360 static
    # on an H100 (docs/performance.md). Block masks carry their lengths as Python ints anyway, so a
    # sweep over many lengths recompiles per length; past dynamo's default limit (8) it would
    # silently fall back to the unfused path, hence the raised limit.
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    return torch.compile(_flex(), dynamic=False)


def _causal_mod(offset: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return mask_mod


@functools.lru_cache(maxsize=32)
def causal_block_mask(n: int, device_str: str):
    """Causal BlockMask for Nq == Nk == n: block row r has full blocks 0..r-1 and partial block r.

    Cached per length, so it is built as ordinary tensors even when the first call comes under
    inference_mode: inference tensors would break a later training step that reuses the mask.
    """
    with torch.inference_mode(False):
        return _build_causal_block_mask(n, device_str)


def _build_causal_block_mask(n: int, device_str: str):
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


_SCORE_MODS: dict[tuple, tuple[torch.Tensor, object]] = {}


def _alibi_score_mod(slopes: torch.Tensor, causal: bool):
    """One score_mod per slopes tensor: a fresh closure per call would make torch.compile recompile."""
    key = (slopes.device, slopes.data_ptr(), causal)
    hit = _SCORE_MODS.get(key)
    if hit is not None and hit[0] is slopes:
        return hit[1]

    if causal:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx)
    else:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

    _SCORE_MODS[key] = (slopes, score_mod)
    return score_mod


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
        if n_q != n_k or (q.device.type == "cuda" and n_q < BLOCK):
            # Cached decoding (a few query rows over a growing cache) and sequences shorter than one
            # block go to SDPA: their ALiBi bias is small, a compiled kernel per cache length would
            # recompile every step, and torch 2.11's flex lowering fails below one 128-block
            # (NoValidChoicesError, seen on an H100 on 2026-11-24 for N=40, fp32 and bf16).
            return _sdpa(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
        score_mod = None
        if alibi_slopes is not None:
            score_mod = _alibi_score_mod(alibi_slopes.to(device=q.device, dtype=torch.float32), causal)
        block_mask = causal_block_mask(n_q, str(q.device)) if causal else None
        gqa = q.shape[1] != k.shape[1]
        if q.device.type == "cuda":
            return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            # FlexAttention has no CPU backward; its CPU path is unfused anyway, so the eager
            # reference computes the same function here.
            return _eager(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
        with warnings.catch_warnings():  # the unfused CPU path is expected here; its warning is noise
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
