"""Manifest -> cases: every model source x every scenario entry x every sweep point."""

from __future__ import annotations

import hashlib
import json

from andromeda.bench.context import Case
from andromeda.bench.manifest import Manifest


def case_id(source: str, scenario: str, params: dict, manifest: Manifest) -> str:
    """Stable id: a hash of everything that decides what the case measures."""
    key = {"source": source, "scenario": scenario, "params": params, "dtype": manifest.dtype,
           "device": manifest.device, "seed": manifest.seed}
    if manifest.launcher is not None:  # the same point run across processes is another measurement
        key["launcher"] = manifest.launcher.model_dump(mode="json", exclude={"timeout_s", "rdzv_endpoint"})
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(manifest: Manifest) -> list[Case]:
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
    return cases
