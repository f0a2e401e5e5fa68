"""Which attention kernel a built model runs, and so whether its backward recomputes the attention
probabilities (backward = 2.5x forward for attention) or reads saved ones (2x): the input to
flops.backward_flops(attention_recompute=...) for latency, throughput and training FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from andromeda.measure.flops import attention_recomputes


def model_attention_impl(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> str | None:
    """The attention implementation `model` runs on `device` with activations in `dtype`, or None if unknown.

    Andromeda: the backend its attn_backend resolves to (`auto` picks per device and dtype, as the model
    does). transformers: config._attn_implementation. x-transformers: "sdpa" where its Attend modules
    use flash (F.scaled_dot_product_attention), "eager" where they do not. DDP and torch.compile wrappers
    are looked through.
    """
    device = torch.device(device)
    while True:  # look through DistributedDataParallel (.module) and torch.compile (._orig_mod), in any order
        inner = next((m for m in (getattr(model, "module", None), getattr(model, "_orig_mod", None))
                      if isinstance(m, nn.Module)), None)
        if inner is None:
            break
        model = inner
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "attn_backend"):
        from andromeda.errors import UnsupportedError
        from andromeda.model import backends

        try:
            return backends.select(backends.AttentionSpec.from_model(cfg, dtype), device, cfg.attn_backend).name
        except UnsupportedError:
            return None
    hf = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if isinstance(hf, str):
        return hf
    for m in model.modules():
        if type(m).__name__ == "Attend" and isinstance(getattr(m, "flash", None), bool):
            return "sdpa" if m.flash else "eager"
    return None


def model_attention_recompute(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether `model`'s attention backward recomputes the probabilities (flops.attention_recomputes).

    A model whose kernel cannot be told, or one the table does not know, keeps the FlashAttention-style
    count (True), flops.backward_flops's default.
    """
    impl = model_attention_impl(model, device, dtype)
    if impl is None:
        return True
    try:
        return attention_recomputes(impl, torch.device(device).type, dtype)
    except ValueError:
        return True


__all__ = ["model_attention_impl", "model_attention_recompute"]
