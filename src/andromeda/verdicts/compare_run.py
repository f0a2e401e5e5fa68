"""A run's `compare:` section -> its comparisons (verdicts, CIs), one per baseline, each with the folder its
report goes to: <run>/compare/, or <run>/compare/<n>-<baseline>/ when there are several. Computes, never
writes: the api has report/compare_report.py write them.

Torch-free, like the report: `andromeda report` reads only the compare: section of the run's manifest.yml,
and the model shapes come from the run's facts.json (written by the runner) when it is there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from andromeda.errors import AndromedaError
from andromeda.schema import strict_yaml
from andromeda.verdicts.compare_spec import CompareSpec
from andromeda.verdicts.comparison import Thresholds
from andromeda.verdicts.regress import compare_sources
from andromeda.verdicts.run_comparison import RunComparison

EXIT_GATE = 1  # a comparison gate failed


@dataclass
class Compared:
    """One baseline's comparison: its result, or why it could not be made; where its report goes, and once
    written, its files."""

    baseline: str
    result: RunComparison | None
    out: Path | None = None  # the folder of its report
    title: str = ""
    error: str | None = None
    gate: bool = False  # the compare: entry's gate: a comparison of models (False) fails nothing
    paths: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """A gate that did not pass: a candidate significantly worse (or newly failing), or no comparison made.
        A comparison of models never fails."""
        return self.gate and (self.result is None or self.result.exit_code != 0)


def gate_exit_code(compared: list[Compared]) -> int:
    """1 when any gate (a compare: entry with gate: true) failed or could not be evaluated, else 0."""
    return EXIT_GATE if any(c.failed for c in compared) else 0


def compare_run(run_dir: str | Path, comparisons: Sequence[CompareSpec], *, name: str, seed: int) -> list[Compared]:
    """Compare each baseline of a run's compare: section (`comparisons`) with its candidates over the run's
    records; `name` (the run's) titles the reports, `seed` seeds the bootstrap.

    A comparison that cannot be made (e.g. its baseline has no ok records) is returned with its error; the
    others go on. Empty without a `compare:` section."""
    specs = list(comparisons)
    facts = recorded_facts(run_dir) if specs else {}
    done = []
    for i, spec in enumerate(specs):
        out = compare_dir(run_dir, spec.baseline, i if len(specs) > 1 else None)
        what = "regression gate" if spec.gate else "models"
        title = f"{name}: {what} against {spec.baseline}"
        t = spec.thresholds
        try:
            result = compare_sources(
                Path(run_dir) / "results.jsonl", spec.baseline, spec.candidates, metric=spec.metrics,
                thresholds=Thresholds(speedup=t.speedup, memory=t.memory, max_abs_diff=t.max_abs_diff,
                                      max_abs_diff_by_dtype=dict(t.max_abs_diff_by_dtype)),
                allow_mismatch=spec.allow_mismatch, facts=facts, correction=spec.correction, alpha=spec.alpha,
                seed=seed, gate=spec.gate,
            )
        except AndromedaError as e:
            done.append(Compared(spec.baseline, None, out, title, error=str(e), gate=spec.gate))
            continue
        done.append(Compared(spec.baseline, result, out, title, gate=spec.gate))
    return done


def compare_run_dir(run_dir: str | Path) -> list[Compared]:
    """`andromeda report`: rebuild the comparisons of a run from its manifest.yml; empty when it has none.

    Only the compare: section is validated again (the run validated the whole manifest): the report
    needs neither torch nor the models, data and checkpoints the manifest names, which may not exist on
    the machine that rebuilds it. A section that does not load is one Compared with the reason, so the
    rest of the report is still built."""
    path = Path(run_dir) / "manifest.yml"
    if not path.is_file():
        return []
    try:
        data = strict_yaml.load(path.read_text(encoding="utf-8"), str(path))  # the manifest loader's own YAML
        section = data.get("compare")
    except Exception as e:  # noqa: BLE001 - not YAML, not a mapping: the comparison cannot be rebuilt
        return [Compared("(manifest.yml)", None, error=f"{path} does not load: {type(e).__name__}: {e}")]
    if not section:
        return []
    try:
        specs = [CompareSpec.model_validate(s) for s in (section if isinstance(section, list) else [section])]
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in ("compare", *err["loc"]))
        return [Compared("(manifest.yml)", None, error=f"{path}: {where}: {err['msg']}")]
    seed = data.get("seed")
    return compare_run(run_dir, specs, name=str(data.get("name", "run")), seed=seed if type(seed) is int else 0)


def recorded_facts(run_dir: str | Path) -> dict[str, Any]:
    """{source: facts} from <run>/facts.json; sources missing there are left to sources.models.source_facts."""
    path = Path(run_dir) / "facts.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    try:
        from andromeda.measure.facts import ModelFacts as make
    except ImportError:  # no torch: the comparison needs the shape fields only
        make = SimpleNamespace
    out = {}
    for source, d in data.items() if isinstance(data, dict) else ():
        try:
            out[source] = make(**d)
        except TypeError:  # written by another version: leave it to source_facts
            continue
    return out


def compare_dir(run_dir: str | Path, baseline: str, index: int | None) -> Path:
    """<run>/compare, or <run>/compare/<index>-<baseline as a file name> when a run has several."""
    base = Path(run_dir) / "compare"
    if index is None:
        return base
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", baseline).strip("-")
    return base / f"{index + 1}-{slug}"
