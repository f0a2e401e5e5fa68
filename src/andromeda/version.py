"""The package's version (pyproject.toml has the same), importable without importing the package's API."""

__version__ = "0.1.0"
