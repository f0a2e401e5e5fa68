"""Checkpoints: weights as safetensors (or a weights-only torch file) beside config.json.

A model built with a custom embedding provider also gets embedding.json, which names the provider's
class: its weights are in the checkpoint, but the module is the user's code, so loading needs an
instance of it (`load_checkpoint(path, embedding=MyProvider(...))`). config.json stays a plain
ModelConfig, readable by anything that reads configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from andromeda.errors import AndromedaError
from andromeda.model.config import ModelConfig
from andromeda.model.transformer import Andromeda

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EMBEDDING = "embedding.json"


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def save_checkpoint(model: Andromeda, directory: str | Path) -> Path:
    from safetensors.torch import save_model

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if model.custom_embedding:
        (d / EMBEDDING).write_text(json.dumps({"provider": _class_name(model.embed)}, indent=2))
    else:
        (d / EMBEDDING).unlink(missing_ok=True)  # a directory reused for a default-embedding model
    save_model(model, str(d / WEIGHTS))  # handles tied embeddings
    return d


def saved_provider(directory: str | Path) -> str | None:
    """The class name of the custom embedding provider a checkpoint was saved with, or None (the default)."""
    f = Path(directory) / EMBEDDING
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text())["provider"])
    except (ValueError, KeyError, TypeError) as e:
        raise AndromedaError(f"checkpoint: {f} is not valid ({e}); it should hold {{\"provider\": \"<class>\"}}") from e


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", *,
                    embedding: nn.Module | None = None) -> Andromeda:
    """Rebuild the model from config.json and load model.safetensors (or model.pt, weights only).

    A checkpoint saved from a model with a custom embedding provider needs `embedding`: an instance of
    that provider (its weights are overwritten with the saved ones).
    """
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise AndromedaError(f"checkpoint: {d / CONFIG} not found; a checkpoint directory holds {CONFIG} and weights")
    cfg = ModelConfig.from_dict(json.loads((d / CONFIG).read_text()))
    model = load_weights(Andromeda(cfg, embedding=embedding), d, device)
    return model.to(device)


def load_weights(model: Andromeda, directory: str | Path, device: str | torch.device = "cpu") -> Andromeda:
    """Load a checkpoint directory's model.safetensors (or model.pt, weights only) into `model`."""
    d = Path(directory)
    provider = saved_provider(d)
    if provider is not None and not model.custom_embedding:
        short = provider.rsplit(".", 1)[-1]
        raise AndromedaError(f"checkpoint: {d} was saved with the custom embedding provider {provider}; "
                             f"pass an instance of it: load_checkpoint(path, embedding={short}(...))")
    if (d / WEIGHTS).is_file():
        from safetensors.torch import load_model

        missing, unexpected = load_model(model, str(d / WEIGHTS), strict=False, device=str(device))
    elif (d / "model.pt").is_file():
        state = torch.load(d / "model.pt", map_location=device, weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        raise AndromedaError(f"checkpoint: no {WEIGHTS} or model.pt in {d}")
    if missing or unexpected:
        saved = f"the custom provider {provider}" if provider else "the default token embedding"
        raise AndromedaError(f"checkpoint: the weights in {d} do not fit the model: missing {sorted(missing)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}; build it from the checkpoint's config with the "
                             f"embedding it was saved with ({saved})")
    return model
