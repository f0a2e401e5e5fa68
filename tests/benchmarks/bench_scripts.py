"""Import a script of benchmarks/ as a module, for the tests of tests/benchmarks (the scripts import their
siblings, so benchmarks/ is on sys.path while the import runs)."""

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
