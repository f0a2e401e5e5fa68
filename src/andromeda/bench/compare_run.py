"""A run's `compare:` section -> the comparison artifacts in <run>/compare/ (verdicts, CIs, chart)."""

from __future__ import annotations

from pathlib import Path

from andromeda.bench.compare import Thresholds
from andromeda.bench.manifest import Manifest
from andromeda.bench.regress import RunComparison, compare_sources
from andromeda.report.compare_report import write_compare_report


def compare_run(run_dir: str | Path, manifest: Manifest) -> tuple[RunComparison, dict[str, list[Path]]] | None:
    """Compare the manifest's candidates with its baseline over the run's records; None without `compare:`."""
    spec = manifest.compare
    if spec is None:
        return None
    t = spec.thresholds
    result = compare_sources(
        Path(run_dir) / "results.jsonl", spec.baseline, spec.candidates, metric=spec.metrics,
        thresholds=Thresholds(speedup=t.speedup, memory=t.memory, max_abs_diff=t.max_abs_diff,
                              max_abs_diff_by_dtype=dict(t.max_abs_diff_by_dtype)),
        allow_mismatch=spec.allow_mismatch, correction=spec.correction, alpha=spec.alpha, seed=manifest.seed,
    )
    paths = write_compare_report(result, Path(run_dir) / "compare", title=f"{manifest.name}: candidates vs "
                                 f"{spec.baseline}")
    return result, paths
