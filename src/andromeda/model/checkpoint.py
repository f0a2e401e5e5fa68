"""Checkpoints: weights as safetensors (or a weights-only torch file) beside config.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from andromeda.errors import AndromedaError
from andromeda.model.config import ModelConfig
from andromeda.model.transformer import Andromeda

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(model: Andromeda, directory: str | Path) -> Path:
    from safetensors.torch import save_model

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    save_model(model, str(d / WEIGHTS))  # handles tied embeddings
    return d


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Andromeda:
    """Rebuild the model from config.json and load model.safetensors (or model.pt, weights only)."""
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise AndromedaError(f"checkpoint: {d / CONFIG} not found; a checkpoint directory holds {CONFIG} and weights")
    cfg = ModelConfig.from_dict(json.loads((d / CONFIG).read_text()))
    model = load_weights(Andromeda(cfg), d, device)
    return model.to(device)


def load_weights(model: Andromeda, directory: str | Path, device: str | torch.device = "cpu") -> Andromeda:
    """Load a checkpoint directory's model.safetensors (or model.pt, weights only) into `model`."""
    d = Path(directory)
    if (d / WEIGHTS).is_file():
        from safetensors.torch import load_model

        load_model(model, str(d / WEIGHTS), device=str(device))
    elif (d / "model.pt").is_file():
        state = torch.load(d / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    else:
        raise AndromedaError(f"checkpoint: no {WEIGHTS} or model.pt in {d}")
    return model
