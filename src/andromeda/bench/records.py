"""Record: the unit of measured data, and the JSONL store the runner appends to.

Pure Python (no torch): the report layer reads records on machines without torch.

One JSON object per line. A case may produce several records (e.g. one per decode position
bucket); all records of a case are written together and flushed before the next case starts,
so a crash loses at most the case in flight and `--resume` skips every case id present.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "oom", "error", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped")


@dataclass
class Record:
    case_id: str  # stable hash of the case's resolved config
    scenario: str  # scenario name, e.g. "latency"
    source: str  # model source, e.g. "andromeda:tiny"
    params: dict[str, Any] = field(default_factory=dict)  # the case's resolved parameters (sweep point)
    status: Status = "ok"
    metrics: dict[str, float] = field(default_factory=dict)  # name -> number; units in the name
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw samples behind the metrics
    message: str | None = None  # error text, skip reason, OOM detail
    info: dict[str, Any] = field(default_factory=dict)  # non-numeric facts: backend used, dtype, device
    env: dict[str, Any] = field(default_factory=dict)  # environment of the run
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_jsonable, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/Inf: store them as null (recursively through dicts and lists)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


class RecordStore:
    """Append-only JSONL file of records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, records: Iterable[Record]) -> None:
        lines = []
        for r in records:
            d = json_safe(json.loads(json.dumps(asdict(r), default=_jsonable)))
            lines.append(json.dumps(d, allow_nan=False))
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[Record]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield Record.from_dict(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash mid-write: that case reruns on resume

    def read(self) -> list[Record]:
        return list(self)

    def case_ids(self) -> set[str]:
        return {r.case_id for r in self}
