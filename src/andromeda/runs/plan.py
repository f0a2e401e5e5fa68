"""Manifest -> cases: every model source x every scenario entry x every sweep point.

Without a `compare:` section the cases run source by source (each model is built once, measured, freed).
With one, the sides of each comparison alternate case by case (ABAB...): every sweep point runs its
baseline case, then that point's candidate cases, then the next point. Drift over a run (thermal, other
load coming and going) then falls on both sides alike instead of on whichever model ran last; the price
is that the compared models stay in memory together.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from andromeda.runs.manifest import Manifest

if TYPE_CHECKING:
    from andromeda.runs.context import Case


def case_id(source: str, scenario: str, params: dict, manifest: Manifest) -> str:
    """Stable id: a hash of everything that decides what the case measures."""
    key = {"source": source, "scenario": scenario, "params": params, "dtype": manifest.dtype,
           "device": manifest.device, "seed": manifest.seed}
    if manifest.launcher is not None:  # the same point run across processes is another measurement
        key["launcher"] = manifest.launcher.model_dump(mode="json", exclude={"timeout_s", "rdzv_endpoint"})
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(manifest: Manifest) -> list[Case]:
    from andromeda.runs.context import Case  # torch: planning is imported where torch may be missing

    cases, seen = [], set()
    for source in manifest.models:
        for index, entry in enumerate(manifest.scenarios):
            for point in entry.points():
                cid = case_id(source, entry.scenario, point, manifest)
                if cid in seen:  # the same point listed twice measures once
                    continue
                seen.add(cid)
                cases.append(Case(case_id=cid, source=source, scenario=entry.scenario, params=point,
                                  group=f"{source}|{index}"))
    return interleave(cases, manifest) if manifest.comparisons and manifest.launcher is None else cases


def source_order(manifest: Manifest) -> list[str]:
    """Each comparison's baseline, then its candidates; then the models in no comparison."""
    order: list[str] = []
    for spec in manifest.comparisons:
        order += [spec.baseline, *(spec.candidates or [m for m in manifest.models if m != spec.baseline])]
    return list(dict.fromkeys([*order, *manifest.models]))


def interleave(cases: list[Case], manifest: Manifest) -> list[Case]:
    """The cases point by point (scenario entry, then sweep point, in plan order), and within a point by
    source_order(): ABAB... for one candidate, ABCABC... for two."""
    rank = {s: i for i, s in enumerate(source_order(manifest))}
    points: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        entry = c.group.rsplit("|", 1)[-1]
        points.setdefault((entry, json.dumps(c.params, sort_keys=True, default=str)), []).append(c)
    return [c for same in points.values() for c in sorted(same, key=lambda c: rank[c.source])]
