"""The Andromeda model. Imports nothing of the suite (an import-linter contract in pyproject.toml).

The names below load on first use (PEP 562), so `andromeda.model.config` (presets, ModelConfig and its
checks) imports without torch: a manifest's model sources are validated before the run imports it.
"""

from importlib import import_module

_WHERE = {
    "Andromeda": "transformer", "lm_loss": "transformer",
    "ModelConfig": "config", "PRESETS": "config", "from_name": "config",
    "KVCache": "cache",
    "EmbeddingProvider": "embedding", "TokenEmbedding": "embedding",
    "ByteTokenizer": "tokenizer", "HFTokenizer": "tokenizer",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "GraphedDecoder": "decode", "StaticStep": "decode",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'andromeda.model' has no attribute '{name}'")
    value = getattr(import_module(f"andromeda.model.{_WHERE[name]}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
