"""A run's `compare:` section -> the comparison artifacts in <run>/compare/ (verdicts, CIs, chart)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from andromeda.bench.compare import Thresholds
from andromeda.bench.manifest import Manifest
from andromeda.bench.regress import RunComparison, compare_sources
from andromeda.errors import AndromedaError
from andromeda.report.compare_report import write_compare_report


@dataclass
class Compared:
    """One baseline's comparison: its result and files, or why it could not be made."""

    baseline: str
    result: RunComparison | None
    paths: dict[str, list[Path]] = field(default_factory=dict)
    error: str | None = None


def compare_run(run_dir: str | Path, manifest: Manifest) -> list[Compared]:
    """Compare each of the manifest's baselines with its candidates over the run's records.

    One comparison writes <run>/compare/; several write <run>/compare/<n>-<baseline>/ each. A comparison
    that cannot be made (e.g. its baseline has no ok records) is returned with its error; the others go on.
    Empty without a `compare:` section."""
    specs = manifest.comparisons
    done = []
    for i, spec in enumerate(specs):
        t = spec.thresholds
        try:
            result = compare_sources(
                Path(run_dir) / "results.jsonl", spec.baseline, spec.candidates, metric=spec.metrics,
                thresholds=Thresholds(speedup=t.speedup, memory=t.memory, max_abs_diff=t.max_abs_diff,
                                      max_abs_diff_by_dtype=dict(t.max_abs_diff_by_dtype)),
                allow_mismatch=spec.allow_mismatch, correction=spec.correction, alpha=spec.alpha,
                seed=manifest.seed,
            )
        except AndromedaError as e:
            done.append(Compared(spec.baseline, None, {}, str(e)))
            continue
        out = compare_dir(run_dir, spec.baseline, i if len(specs) > 1 else None)
        paths = write_compare_report(result, out, title=f"{manifest.name}: candidates vs {spec.baseline}")
        done.append(Compared(spec.baseline, result, paths))
    return done


def compare_dir(run_dir: str | Path, baseline: str, index: int | None) -> Path:
    """<run>/compare, or <run>/compare/<index>-<baseline as a file name> when a run has several."""
    base = Path(run_dir) / "compare"
    if index is None:
        return base
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", baseline).strip("-")
    return base / f"{index + 1}-{slug}"
