"""Andromeda: a decoder-only transformer and a benchmark/diagnostics suite for transformer LMs."""

from andromeda.errors import AndromedaError, ConfigError

__version__ = "0.1.0"
__all__ = ["AndromedaError", "ConfigError", "__version__"]
