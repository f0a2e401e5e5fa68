"""The optimizer of a training run: AdamW (torch's fused kernel on CUDA, foreach elsewhere, when asked) or
bitsandbytes' 8-bit AdamW, with weight decay on matrices and embeddings only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from andromeda.errors import UnsupportedError


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters, a shared (tied) one once, in registration order."""
    return list({id(p): p for p in model.parameters()}.values())


def make_optimizer(model: nn.Module, cfg, device: torch.device,
                   params: Sequence[torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """AdamW over `params` (default: the model's trainable parameters) with weight decay on >= 2-D tensors.

    cfg.optimizer "adamw8bit" is bitsandbytes' AdamW8bit (CUDA); cfg.fused_adamw picks torch's fused AdamW on
    CUDA and the foreach implementation on other devices. `params` are the float32 master copies under
    precision bf16-master (train/precision.py)."""
    params = [p for p in unique_params(model) if p.requires_grad] if params is None else list(params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adamw8bit":
        reason = adamw8bit_unavailable(device)
        if reason:
            raise UnsupportedError(reason)
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    if getattr(cfg, "fused_adamw", False):
        kw.update(fused=True) if torch.device(device).type == "cuda" else kw.update(foreach=True)
    return torch.optim.AdamW(groups, **kw)


def adamw8bit_unavailable(device: torch.device) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot run here, or None when it can."""
    kind = torch.device(device).type
    if kind != "cuda":
        return f"optimizer adamw8bit: bitsandbytes 8-bit AdamW needs a CUDA device; this run is on {kind}"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "optimizer adamw8bit: bitsandbytes is not installed; install it with: pip install bitsandbytes"
    return None


__all__ = ["make_optimizer", "adamw8bit_unavailable", "unique_params"]
