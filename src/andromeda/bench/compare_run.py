"""A run's `compare:` section -> the comparison artifacts in <run>/compare/ (verdicts, CIs, chart).

Torch-free, like the report: `andromeda report` reads only the compare: section of the run's manifest.yml,
and the model shapes come from the run's facts.json (written by the runner) when it is there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from andromeda.bench.compare import Thresholds
from andromeda.bench.regress import RunComparison, compare_sources
from andromeda.errors import AndromedaError
from andromeda.report.compare_report import write_compare_report

if TYPE_CHECKING:
    from andromeda.bench.manifest import Manifest

EXIT_GATE = 1  # a comparison gate failed


@dataclass
class Compared:
    """One baseline's comparison: its result and files, or why it could not be made."""

    baseline: str
    result: RunComparison | None
    paths: dict[str, list[Path]] = field(default_factory=dict)
    error: str | None = None
    gate: bool = False  # the compare: entry's gate: a comparison of models (False) fails nothing

    @property
    def failed(self) -> bool:
        """A gate that did not pass: a candidate significantly worse (or newly failing), or no comparison made.
        A comparison of models never fails."""
        return self.gate and (self.result is None or self.result.exit_code != 0)


def gate_exit_code(compared: list[Compared]) -> int:
    """1 when any gate (a compare: entry with gate: true) failed or could not be evaluated, else 0."""
    return EXIT_GATE if any(c.failed for c in compared) else 0


def compare_run(run_dir: str | Path, manifest: Manifest | SimpleNamespace) -> list[Compared]:
    """Compare each of the manifest's baselines with its candidates over the run's records.

    One comparison writes <run>/compare/; several write <run>/compare/<n>-<baseline>/ each. A comparison
    that cannot be made (e.g. its baseline has no ok records) is returned with its error; the others go on.
    Empty without a `compare:` section."""
    specs = manifest.comparisons
    facts = recorded_facts(run_dir) if specs else {}
    done = []
    for i, spec in enumerate(specs):
        t = spec.thresholds
        try:
            result = compare_sources(
                Path(run_dir) / "results.jsonl", spec.baseline, spec.candidates, metric=spec.metrics,
                thresholds=Thresholds(speedup=t.speedup, memory=t.memory, max_abs_diff=t.max_abs_diff,
                                      max_abs_diff_by_dtype=dict(t.max_abs_diff_by_dtype)),
                allow_mismatch=spec.allow_mismatch, facts=facts, correction=spec.correction, alpha=spec.alpha,
                seed=manifest.seed, gate=spec.gate,
            )
        except AndromedaError as e:
            done.append(Compared(spec.baseline, None, {}, str(e), gate=spec.gate))
            continue
        out = compare_dir(run_dir, spec.baseline, i if len(specs) > 1 else None)
        what = "regression gate" if spec.gate else "models"
        paths = write_compare_report(result, out, title=f"{manifest.name}: {what} against {spec.baseline}")
        done.append(Compared(spec.baseline, result, paths, gate=spec.gate))
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
        from andromeda.schema.strict_yaml import load as load_yaml  # the manifest loader's own strict YAML

        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
        section = data.get("compare")
    except Exception as e:  # noqa: BLE001 - not YAML, not a mapping: the comparison cannot be rebuilt
        return [Compared("(manifest.yml)", None, {}, f"{path} does not load: {type(e).__name__}: {e}")]
    if not section:
        return []
    from pydantic import ValidationError

    try:
        from andromeda.bench.manifest import CompareSpec

        specs = [CompareSpec.model_validate(s) for s in (section if isinstance(section, list) else [section])]
    except ImportError as e:
        return [Compared("(manifest.yml)", None, {}, f"cannot read the compare: section here: {e}")]
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in ("compare", *err["loc"]))
        return [Compared("(manifest.yml)", None, {}, f"{path}: {where}: {err['msg']}")]
    seed = data.get("seed")
    return compare_run(run_dir, SimpleNamespace(comparisons=specs, name=str(data.get("name", "run")),
                                                seed=seed if type(seed) is int else 0))


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
