"""The attention scenario (scenario.py) with its private helpers: the implementations it compares behind one
calling convention (impls.py) and the sparsity patterns with their exact pair and block counts (sparsity.py)."""

from andromeda.scenarios.attention.scenario import Attention  # noqa: F401 - importing the package registers it
