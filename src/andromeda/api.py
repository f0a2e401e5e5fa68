"""The Python API: what the command line calls, and what a user calls from Python.

    compare_run(run_dir, manifest)  a run's compare: section -> its comparisons, each report written
    report(run_dir, formats)        every artifact of a finished run rebuilt from its records

Each imports what it needs when called: `import andromeda` stays light (no torch, no pandas).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from andromeda.runs.manifest import Manifest
    from andromeda.verdicts.compare_run import Compared


def compare_run(run_dir: str | Path, manifest: Manifest) -> list[Compared]:
    """Compare each baseline of the manifest's compare: section with its candidates over the run's records and
    write each comparison's report (<run>/compare/, or <run>/compare/<n>-<baseline>/ when there are several).
    A comparison that cannot be made is returned with its error; the others go on."""
    from andromeda.verdicts.compare_run import compare_run as compare

    return _write(compare(run_dir, manifest.comparisons, name=manifest.name, seed=manifest.seed))


def report(run_dir: str | Path, formats: Iterable[str] | None = None) -> tuple[list[Compared], dict[str, list[Path]]]:
    """Rebuild a finished run's artifacts from its results.jsonl: its comparisons (when its manifest.yml has a
    compare: section) and the report in `formats` (default: all). Torch-free. Returns the comparisons and the
    report's files by format."""
    from andromeda.report import build_report
    from andromeda.verdicts.compare_run import compare_run_dir

    compared = _write(compare_run_dir(run_dir))
    paths = build_report(Path(run_dir), formats) if formats else build_report(Path(run_dir))
    return compared, paths


def _write(compared: list[Compared]) -> list[Compared]:
    """Write the report of every comparison that was made into its folder."""
    from andromeda.report.compare_report import write_compare_report

    for c in compared:
        if c.result is not None:
            c.paths = write_compare_report(c.result, c.out, title=c.title)
    return compared
