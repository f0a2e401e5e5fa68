"""Record: the unit of measured data, the JSONL store the runner appends to, and reading a run's records.

Pure Python (no torch): scenarios write records, the report layer and the comparisons read them, on
machines without torch too.

One JSON object per line. A case may produce several records (e.g. one per decode position
bucket); all records of a case are written together and flushed before the next case starts,
so a crash loses at most the case in flight and `--resume` skips every case id present.

A crash mid-write leaves a torn last line. The next append starts on a new line (never on the
fragment), and readers leave out the fragment and the records of its case written just before it
in the same write, so `--resume` reruns that case whole.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from andromeda.errors import AndromedaError

RESULTS = "results.jsonl"  # a run directory's records
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

    @classmethod
    def parse(cls, d: Any) -> Record:
        """A record from a JSON value read back from a file: RecordError (one line, naming the field)
        when it is not a record or a field has the wrong type."""
        if not isinstance(d, dict):
            raise RecordError(f"a record is a JSON object, got {_kind(d)}")
        for name, (types, what) in _FIELD_TYPES.items():
            if name not in d:
                if name in _REQUIRED:
                    raise RecordError(f"field '{name}' is missing")
            elif not isinstance(d[name], types):
                raise RecordError(f"field '{name}' must be {what}, got {_kind(d[name])}")
        for name, v in d.get("metrics", {}).items():
            if not _number(v):
                raise RecordError(f"metrics.{name} must be a number or null, got {_kind(v)}")
        for name, v in d.get("samples", {}).items():
            if not isinstance(v, list) or not all(_number(x) for x in v):
                raise RecordError(f"samples.{name} must be a list of numbers, got {_kind(v)}")
        try:
            return cls.from_dict(d)
        except ValueError as e:  # __post_init__: the status
            raise RecordError(f"field 'status': {e}") from None


class RecordError(AndromedaError, ValueError):
    """A line of results.jsonl that is JSON but not a record (a field of the wrong type)."""


_REQUIRED = ("case_id", "scenario", "source")
_FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    **{k: (str, "a string") for k in (*_REQUIRED, "status", "time")},
    **{k: (dict, "an object") for k in ("params", "metrics", "samples", "info", "env")},
    "message": ((str, type(None)), "a string or null"),
}


def _number(v: Any) -> bool:
    return v is None or isinstance(v, float) or (isinstance(v, int) and abs(v) <= _FLOAT_MAX)


_FLOAT_MAX = 1.7976931348623157e308


def _kind(v: Any) -> str:
    if isinstance(v, int) and abs(v) > _FLOAT_MAX:
        return "an integer too large for a float"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


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


_CASE_ID = re.compile(r'\{\s*"case_id"\s*:\s*"([^"\\]+)"')  # a fragment's case id, when it got that far


@dataclass
class Scan:
    """What reading results.jsonl found: the records, the lines cut short by a crash (torn), and the
    records left out because a torn line of their case followed them (that case's write was cut)."""

    records: list[Record]
    torn: int = 0
    left_out: int = 0


class RecordStore:
    """Append-only JSONL file of records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def ends_torn(self) -> bool:
        """True when the file ends inside a line (a write cut short): the next append needs a newline first."""
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, os.SEEK_END) == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def append(self, records: Iterable[Record]) -> None:
        lines = []
        for r in records:
            d = json_safe(json.loads(json.dumps(asdict(r), default=_jsonable)))
            lines.append(json.dumps(d, allow_nan=False))
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = "\n" if self.ends_torn() else ""  # never onto a fragment: that would lose this record too
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(start + "\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def scan(self) -> Scan:
        """Every record; a line that is not JSON (cut short by a crash mid-write) is left out, and with it
        the records of its case just before it (the same write, cut): a resumed run reruns that case.
        RecordError (one line, with the line number) for JSON that is not a record."""
        out = Scan([])
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    out.torn += 1
                    m = _CASE_ID.match(line)
                    while m and out.records and out.records[-1].case_id == m.group(1):
                        out.records.pop()
                        out.left_out += 1
                    continue
                try:
                    out.records.append(Record.parse(data))
                except RecordError as e:
                    raise RecordError(f"{self.path} line {number}: {e}; correct or delete that line") from None
        return out

    def __iter__(self) -> Iterator[Record]:
        return iter(self.scan().records)

    def read(self) -> list[Record]:
        return self.scan().records

    def case_ids(self) -> set[str]:
        return {r.case_id for r in self}


def load_records(run_dir: Path, *, allow_file: bool = False) -> list[Record]:
    """Records of a run directory's results.jsonl (or, with allow_file, of a .jsonl file itself)."""
    return load_scan(run_dir, allow_file=allow_file).records


def load_scan(run_dir: Path, *, allow_file: bool = False) -> Scan:
    """load_records(), with the count of lines cut short by a crash and of records left out with them."""
    run_dir = Path(run_dir)
    if allow_file and run_dir.is_file():
        path = run_dir
    elif not run_dir.is_dir():
        what = "run not found" if allow_file else "run directory not found"
        raise AndromedaError(f"{what}: {run_dir}")
    else:
        path = run_dir / RESULTS
    if not path.is_file():
        raise AndromedaError(f"no {RESULTS} in {run_dir}: run a benchmark into this directory first")
    scan = RecordStore(path).scan()  # RecordError (an AndromedaError) names the line and field
    if not scan.records:
        raise AndromedaError(f"{path} holds no records")
    return scan
