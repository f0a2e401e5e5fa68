"""Device resolution: 'auto' is the best accelerator present."""

from __future__ import annotations

import torch

from andromeda.errors import AndromedaError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise AndromedaError(f"device: '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AndromedaError("device: cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise AndromedaError("device: mps was asked for but is not available; use --device cpu or auto")
    return dev
