"""Checkpoint files of a training run: torch.save of tensors and plain containers, written
atomically (a temporary file, then a rename), read back with torch.load(weights_only=True)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from andromeda.errors import AndromedaError


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path`; a crash mid-write leaves the previous checkpoint intact."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, p)
    return p


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_state onto the CPU (weights only: no code runs)."""
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AndromedaError(f"training: checkpoint '{p}' does not exist") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise AndromedaError(f"training: cannot read checkpoint '{p}': {type(e).__name__}: {e}") from None


__all__ = ["save_state", "load_state"]
