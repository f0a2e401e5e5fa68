"""Model internals: parameter counts, activation / gradient / attention statistics, the input suite.

Diagnostics imports the model, never the reverse. Entry points: `Diagnostics` (api.py) for a
training loop, the `diagnostics` benchmark scenario for a report.
"""

from andromeda.diagnostics.api import Diagnostics, DiagnosticsOptions, DiagnosticsReport
from andromeda.diagnostics.gradients import GradThresholds
from andromeda.diagnostics.params import ParamCounts, count_parameters
from andromeda.diagnostics.sites import ModelMap, find_sites
from andromeda.diagnostics.streaming import RunningStats, tensor_stats

__all__ = [
    "Diagnostics", "DiagnosticsOptions", "DiagnosticsReport", "GradThresholds", "ParamCounts", "count_parameters",
    "ModelMap", "find_sites", "RunningStats", "tensor_stats",
]
