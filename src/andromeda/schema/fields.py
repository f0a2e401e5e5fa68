"""Typed, bounded manifest fields: every number a manifest holds has a type, a range and a finite value.

Numbers are strict: a boolean is not an integer (`seq_len: [true]`), a string is not a number
(`seed: !!str "5"`), 2.0 is not an integer, and inf / nan are refused. Every count and time has an
upper bound, named in the error, so that no manifest can ask for a run that never ends
(`timing.warmup: 1e12`) or a tensor no machine holds (`batch: 1e30`). Torch-free.

The bounds (inclusive):
  tokens per sequence (seq_len, prompt_len, gen_len, windows)   1 .. 1,048,576 (2^20)
  batch                                                         1 .. 65,536
  timed repetitions (runs, iters, timing.min_runs/max_runs)     1 .. 1,000,000
  warm-up runs                                                  0 .. 10,000
  training steps                                                1 .. 10,000,000
  seconds of one measurement (budget_s, warmup_s)               0 .. 3,600
  seed                                                          0 .. 2^32 - 1 (numpy's and torch's seeds)
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from andromeda.errors import AndromedaError

TOKENS_MAX = 1 << 20
BATCH_MAX = 65_536
RUNS_MAX = 1_000_000
WARMUP_MAX = 10_000
STEPS_MAX = 10_000_000
SECONDS_MAX = 3_600.0
SEED_MAX = 2**32 - 1
HEADS_MAX = 4_096
CASES_MAX = 100_000  # cases one manifest may plan (models x sweep points)
FLOAT_MAX = 1e300  # "any finite number": the bound only keeps inf out

DTYPES = ("float32", "bfloat16", "float16")  # the dtypes a model runs in

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StrictModel(BaseModel):
    """Unknown keys, coercions and non-finite floats refused. (A Python caller's tuples count as lists.)"""

    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _tuples_are_lists(cls, data: Any) -> Any:
        return _lists(data) if isinstance(data, dict) else data


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    return v


def show(v: Any) -> str:
    """A value as an error message quotes it: YAML-ish, short."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(x: float) -> str:
    return f"{x:,}".replace(",", "_") if isinstance(x, int) and abs(x) >= 100_000 else f"{x:g}"


def check_int(v: Any, lo: int, hi: int) -> int:
    """The type half of an integer field (the range half is pydantic's ge/le, whose message names the bound)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be an integer from {_fmt(lo)} to {_fmt(hi)}, got {show(v)}")
    return v


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    if hi >= FLOAT_MAX:  # no upper bound but finiteness
        return f"{'>' if lo_open else '>='} {_fmt(lo)}"
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def check_float(v: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """The type half of a number field: int or float, finite (the range half is pydantic's)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"must be a finite number {_interval(lo, hi, lo_open, hi_open)}, got {show(v)}")
    return v


def Int(lo: int, hi: int) -> Any:  # noqa: N802 - a type factory
    """An integer in [lo, hi]; bools, floats and strings refused, with the range in the message."""
    low = {"gt": 0} if lo == 1 else {"ge": lo}  # "greater than 0" reads better than "greater than or equal to 1"
    return Annotated[int, BeforeValidator(lambda v: check_int(v, lo, hi)), Field(**low, le=hi)]


def Float(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Any:  # noqa: N802
    """A finite number in the interval; integers are accepted, bools and strings refused."""
    bounds = {"gt" if lo_open else "ge": lo}
    if hi < FLOAT_MAX:
        bounds["lt" if hi_open else "le"] = hi
    return Annotated[float, BeforeValidator(lambda v: check_float(v, lo, hi, lo_open=lo_open, hi_open=hi_open)),
                     Field(**bounds)]


def NonEmpty(item: Any, max_len: int = 10_000) -> Any:  # noqa: N802
    """A non-empty list (a sweep axis) of `item`."""
    return Annotated[list[item], Field(min_length=1, max_length=max_len)]


Tokens = Int(1, TOKENS_MAX)
Tokens2 = Int(2, TOKENS_MAX)  # a sequence something is predicted in: one token of context, one target
Batch = Int(1, BATCH_MAX)
Runs = Int(1, RUNS_MAX)
Warmup = Int(0, WARMUP_MAX)
Steps = Int(1, STEPS_MAX)
StepsOr0 = Int(0, STEPS_MAX)
Seed = Int(0, SEED_MAX)
Heads = Int(1, HEADS_MAX)
PosFloat = Float(0.0, FLOAT_MAX, lo_open=True)
NonNegFloat = Float(0.0, FLOAT_MAX)
Fraction = Float(0.0, 1.0)  # [0, 1]
Seconds = Float(0.0, SECONDS_MAX)

__all__ = [
    "Int", "Float", "NonEmpty", "StrictModel", "STRICT", "check_int", "check_float", "show", "Tokens", "Tokens2",
    "Batch", "Runs", "Warmup", "Steps", "StepsOr0", "Seed", "Heads", "PosFloat", "NonNegFloat", "Fraction",
    "Seconds", "TOKENS_MAX", "BATCH_MAX", "RUNS_MAX", "WARMUP_MAX", "STEPS_MAX", "SECONDS_MAX", "SEED_MAX",
    "HEADS_MAX", "CASES_MAX",
]


def check_each(items: list[str], check, strip: str = "") -> list[str]:
    """Run `check` on each item; its AndromedaError becomes a ValueError that the manifest's one-line error
    shows as [i]."""
    for i, item in enumerate(items):
        try:
            check(item)
        except AndromedaError as e:
            raise ValueError(f"[{i}] {str(e).removeprefix(strip)}") from None
    return items
