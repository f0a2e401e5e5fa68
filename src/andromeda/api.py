"""The Python API: what the command line calls, and what a user calls from Python.

    result = benchmark("quick", out="runs/q")   # a preset name, a manifest file, a dict or a Manifest
    result.records, result.report["html"]       # results.jsonl, the report's files by format
    df = load_run("runs/q")                     # the records as a pandas DataFrame, a row per record
    verdict = compare("runs/old", "runs/new")   # two runs: the regression gate of `andromeda compare`

Each function imports what it needs when it is called, so `import andromeda` stays light (no torch, no
pandas). The command line (cli.py) parses its arguments, calls these and prints what they return.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from andromeda.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from andromeda.runs.manifest import Manifest
    from andromeda.runs.progress import Progress
    from andromeda.runs.runner import RunResult
    from andromeda.verdicts.claims import ClaimsResult
    from andromeda.verdicts.compare_run import Compared
    from andromeda.verdicts.comparison import Thresholds
    from andromeda.verdicts.run_comparison import RunComparison


# ---- running -----------------------------------------------------------------------------------------
@dataclass
class Benchmark:
    """What benchmark() did: the run (cases and records by status), the comparisons of its compare: section,
    and the report's files by format."""

    out: Path
    run: RunResult
    comparisons: list[Compared]
    report: dict[str, list[Path]]

    @property
    def records(self) -> Path:
        """The run's results.jsonl: one record per line."""
        from andromeda.records import RESULTS

        return self.out / RESULTS

    @property
    def exit_code(self) -> int:
        """3 when a case errored, else 1 when a comparison gate failed, else 0 (the command line's exit code)."""
        from andromeda.verdicts.compare_run import gate_exit_code

        return self.run.exit_code or gate_exit_code(self.comparisons)


def load_manifest(manifest: str | Path | Mapping[str, Any] | None = None, *, preset: str | None = None,
                  overrides: Sequence[str] | None = None) -> Manifest:
    """A manifest file (a path) or a dict, or a built-in preset (preset=NAME), validated and checked as a run
    needs it; `overrides` are `--set` items (key.path=value). Errors are one line (ConfigError). Torch-free up
    to the check of the model sources it names."""
    from andromeda.runs import manifest as m

    if not isinstance(manifest, Mapping):
        return m.load_manifest(manifest, preset=preset, overrides=list(overrides or []))
    if preset is not None:
        raise ConfigError("give a manifest (a file or a dict) or a preset, not both")
    data = copy.deepcopy(dict(manifest))
    for item in overrides or []:
        m.apply_override(data, item)
    loaded = m.validate(data)
    m.check_resources(loaded)
    return loaded


def benchmark(manifest: str | Path | Mapping[str, Any] | Manifest, out: str | Path | None = None, *,
              overrides: Sequence[str] | None = None, resume: bool = False, device: str | None = None,
              force: bool = False, progress: Progress | None = None, capture_output: bool = False) -> Benchmark:
    """Run a manifest: a built-in preset's name, a manifest file, a dict or a Manifest. Every case's records go
    to <out>/results.jsonl (default out: the manifest's `out`, else runs/<name>-<time>), then its compare:
    section's comparisons and the report in the manifest's formats are written next to them.

    resume: finish an interrupted run (finished cases are kept). device: instead of the manifest's. force: run
    a manifest sized for a GPU on a CPU. progress: a runs.progress.Progress (the command line plugs a progress
    bar in). capture_output: library warnings go to <out>/run.log, not the terminal."""
    from andromeda.runs import runner
    from andromeda.runs.manifest import Manifest, preset_names

    if isinstance(manifest, Manifest):
        if overrides:
            raise ConfigError("overrides apply to a manifest file, dict or preset, not to a Manifest")
        m = manifest
    elif isinstance(manifest, Mapping) or Path(manifest).is_file():
        m = load_manifest(manifest, overrides=overrides)
    elif str(manifest) in preset_names():
        m = load_manifest(preset=str(manifest), overrides=overrides)
    else:
        raise ConfigError(f"'{manifest}' is neither a manifest file nor a preset ({', '.join(preset_names())})")
    out = run_dir(m, out)
    result = runner.run(m, out, resume=resume, device=device, progress=progress, force=force,
                        capture_output=capture_output)
    compared = compare_run(out, m)
    return Benchmark(out, result, compared, _build_report(out, m.report.formats))


def run_dir(manifest: Manifest, out: str | Path | None = None) -> Path:
    """Where a run of `manifest` goes: `out`, else the manifest's out:, else runs/<name>-<date>-<time>."""
    from datetime import datetime

    return Path(out or manifest.out or f"runs/{manifest.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


# ---- reading and comparing runs ----------------------------------------------------------------------
def load_run(run_dir: str | Path) -> pd.DataFrame:
    """The records of a run directory (or of a .jsonl file) as a DataFrame, one row per record: case_id,
    scenario, source, status, message, then params.<name>, metrics.<name> (float64) and info.<name> columns
    (docs/report-format.md). Torch-free."""
    from andromeda.records import load_records
    from andromeda.report.load import frame

    return frame(load_records(Path(run_dir), allow_file=True))


def compare(old: str | Path, new: str | Path | None = None, *, baseline: str | None = None,
            candidates: Sequence[str] | None = None, metric: str | Sequence[str] = "latency_ms",
            thresholds: Thresholds | Mapping[str, Any] | None = None, allow_mismatch: bool = False, gate: bool = False,
            correction: str = "holm", alpha: float = 0.05, seed: int = 0) -> RunComparison:
    """What `andromeda compare` computes. Two runs (OLD, NEW): a regression gate, case by case; its exit_code
    is 1 on a significant regression beyond the threshold and the noise floor, or a newly failing case. One run
    with `baseline`: its models against that source, faster / slower per case and per candidate (a gate too
    with `gate`). thresholds: a Thresholds or a dict of its fields (speedup, memory, max_abs_diff,
    max_abs_diff_by_dtype). The result's summary_lines() is the text the command line prints. Torch-free."""
    from andromeda.verdicts.comparison import Thresholds
    from andromeda.verdicts.regress import compare as compare_records

    if isinstance(thresholds, Mapping):
        thresholds = Thresholds.from_dict(thresholds)
    return compare_records(old, new, baseline=baseline, candidates=candidates, allow_mismatch=allow_mismatch,
                           gate=gate, metric=metric, thresholds=thresholds, correction=correction, alpha=alpha,
                           seed=seed)


def write_comparison(result: RunComparison, out: str | Path,
                     formats: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """A comparison's report in `out`: compare.{md,html,tex,csv,json,png} (or `formats`); its files by format."""
    from andromeda.report.compare_report import write_compare_report

    return write_compare_report(result, out, *([list(formats)] if formats else []))


def compare_run(run_dir: str | Path, manifest: Manifest) -> list[Compared]:
    """Compare each baseline of the manifest's compare: section with its candidates over the run's records and
    write each comparison's report (<run>/compare/, or <run>/compare/<n>-<baseline>/ when there are several).
    A comparison that cannot be made is returned with its error; the others go on."""
    from andromeda.verdicts.compare_run import compare_run as compare_section

    return _write(compare_section(run_dir, manifest.comparisons, name=manifest.name, seed=manifest.seed))


def report(run_dir: str | Path, formats: Iterable[str] | None = None) -> tuple[list[Compared], dict[str, list[Path]]]:
    """Rebuild a finished run's artifacts from its results.jsonl: its comparisons (when its manifest.yml has a
    compare: section) and the report in `formats` (default: all). Torch-free. Returns the comparisons and the
    report's files by format."""
    from andromeda.verdicts.compare_run import compare_run_dir

    return _write(compare_run_dir(run_dir)), _build_report(Path(run_dir), formats)


def _build_report(run_dir: Path, formats: Iterable[str] | None) -> dict[str, list[Path]]:
    from andromeda.report import build_report

    return build_report(run_dir, formats) if formats else build_report(run_dir)


def _write(compared: list[Compared]) -> list[Compared]:
    """Write the report of every comparison that was made into its folder."""
    for c in compared:
        if c.result is not None:
            c.paths = write_comparison(c.result, c.out)
    return compared


# ---- what the suite knows ----------------------------------------------------------------------------
def catalog() -> list[tuple[str, str, str]]:
    """(kind, name, notes) of every run preset (with the device it is sized for), scenario (with what it
    sweeps), model preset, model source form and attention backend: what `andromeda list` shows."""
    from andromeda import scenarios
    from andromeda.model import PRESETS, backends
    from andromeda.runs.manifest import load_manifest as read_preset
    from andromeda.runs.manifest import preset_names
    from andromeda.sources import models

    rows = []
    for name in preset_names():
        m = read_preset(preset=name, resolve=False)
        sized = {"gpu": f"GPU (on a CPU: --preset {m.cpu_counterpart})" if m.cpu_counterpart else "GPU",
                 "cpu": "CPU", "any": "any device"}[m.sized_for]
        rows.append(("run preset", name, f"[{sized}] {m.description}"))
    for name in scenarios.names():
        cls = scenarios.get(name).Config
        fields = cls.model_fields
        rows.append(("scenario", name, "sweeps: " + ", ".join(fields[k].alias or k if k in fields else k
                                                               for k in cls.SWEEP)))
    rows += [("model preset", f"andromeda:{name}", "") for name in PRESETS]
    rows += [("model source", pattern, note) for pattern, note in models.describe().items()]
    rows += [("attention backend", name, "") for name in backends.names()]
    return rows


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (every field with its description), for editor completion. Torch-free."""
    from andromeda.runs.manifest import json_schema

    return json_schema()


def claims(path: str | Path | None = None, *, out: str | Path, device: str = "auto",
           peak_tflops: float | None = None, max_preset: str | None = None,
           measure: bool = True) -> tuple[ClaimsResult, dict[str, list[Path]]]:
    """The spec's claims (the built-in claims.yml, or the file at `path`) against physical floors, measured on
    a CUDA GPU when one is used and `measure`; claims.md and claims.json written to `out`."""
    from andromeda.report.claims_report import write_claims_report
    from andromeda.verdicts.claims import check_claims

    result = check_claims(path, device=device, peak_tflops=peak_tflops, max_preset=max_preset, measure=measure)
    return result, write_claims_report(result.to_dict(), Path(out))


__all__ = ["Benchmark", "benchmark", "load_manifest", "run_dir", "load_run", "compare", "write_comparison",
           "compare_run", "report", "catalog", "manifest_schema", "claims"]
