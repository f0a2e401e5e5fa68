"""Andromeda: a decoder-only transformer and a benchmark/diagnostics suite for transformer LMs.

The model: andromeda.model. The suite from Python: benchmark(), load_run() and compare() (andromeda.api),
imported on first use, so `import andromeda` loads neither torch nor pandas.
"""

from andromeda.errors import AndromedaError, ConfigError
from andromeda.version import __version__

_API = ("benchmark", "load_run", "compare")
__all__ = ["AndromedaError", "ConfigError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from andromeda import api

        return getattr(api, name)
    raise AttributeError(f"module 'andromeda' has no attribute {name!r}")
