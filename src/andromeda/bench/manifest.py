"""Manifest: a YAML file (or a built-in preset) validated into a typed run description.

Unknown keys and wrong types are refused with the YAML path of the field and the allowed values,
in one line. Built-in presets live as YAML files in bench/presets/. YAML is read with safe_load:
a manifest can hold data only, never code.
"""

from __future__ import annotations

import re
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from andromeda.bench import scenarios
from andromeda.bench.launch import LauncherSpec, check_manifest
from andromeda.bench.timing import TimingConfig
from andromeda.errors import AndromedaError, ConfigError

FORMATS = ("csv", "json", "png", "md", "html", "tex")
DTYPES = ("float32", "bfloat16", "float16")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimingSpec(Strict):
    warmup: Annotated[int, Field(ge=0)] = 2
    warmup_s: Annotated[float, Field(ge=0)] = 0.0
    min_runs: Annotated[int, Field(gt=0)] = 5
    max_runs: Annotated[int, Field(gt=0)] = 100
    budget_s: Annotated[float, Field(gt=0)] = 1.0
    target_rel_ci: Annotated[float, Field(gt=0)] | None = 0.02
    flush_l2: bool = False
    cuda_graph: bool = False

    def to_config(self) -> TimingConfig:
        if self.max_runs < self.min_runs:
            raise ConfigError(f"timing.max_runs: must be >= min_runs ({self.min_runs}), got {self.max_runs}")
        return TimingConfig(**self.model_dump())


class ReportSpec(Strict):
    formats: Annotated[list[Literal[FORMATS]], Field(min_length=1)] = list(FORMATS)  # type: ignore[valid-type]


def _check_each(items: list[str], check, strip: str = "") -> list[str]:
    """Run `check` on each item; its AndromedaError becomes a ValueError that format_error shows as [i]."""
    for i, item in enumerate(items):
        try:
            check(item)
        except AndromedaError as e:
            raise ValueError(f"[{i}] {str(e).removeprefix(strip)}") from None
    return items


class CompareThresholds(Strict):
    speedup: Annotated[float, Field(ge=1.0)] = 1.2  # a significant time/throughput change must reach this factor
    memory: Annotated[float, Field(ge=0.0)] = 0.05  # relative change a memory metric must exceed
    max_abs_diff: Annotated[float, Field(ge=0.0)] = 1e-5
    max_abs_diff_by_dtype: dict[Literal[DTYPES], Annotated[float, Field(ge=0.0)]] = {}  # type: ignore[valid-type]


class CompareSpec(Strict):
    """Candidates against a baseline, all from this manifest's models, with verdicts."""

    baseline: str
    candidates: list[str] | None = None  # None: every other model
    metrics: Annotated[list[str], Field(min_length=1)] = ["latency_ms"]
    allow_mismatch: bool = False  # compare models of different shapes (parameter and FLOP ratios shown)
    correction: Literal["holm", "bh", "none"] = "holm"
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    thresholds: CompareThresholds = CompareThresholds()

    @field_validator("metrics")
    @classmethod
    def _directed(cls, v: list[str]) -> list[str]:
        from andromeda.bench.compare import metric_kind

        return _check_each(v, metric_kind)


ScenarioEntry = Annotated[
    Union[tuple(scenarios.configs())],  # type: ignore[misc]  # noqa: UP007
    Field(discriminator="scenario"),
]


class Manifest(Strict):
    name: str = "run"
    description: str = ""
    models: Annotated[list[str], Field(min_length=1)]
    scenarios: Annotated[list[ScenarioEntry], Field(min_length=1)]
    device: str = "auto"
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    seed: int = 0
    out: str | None = None
    peak_tflops: Annotated[float, Field(gt=0)] | None = None  # override the device table for MFU
    timing: TimingSpec = TimingSpec()
    report: ReportSpec = ReportSpec()
    compare: CompareSpec | list[CompareSpec] | None = None  # a list: several baselines, each with its candidates
    launcher: LauncherSpec | None = None  # run every case across processes through torchrun (bench/launch.py)

    @model_validator(mode="after")
    def _launcher(self) -> Manifest:
        check_manifest(self)
        return self

    @property
    def comparisons(self) -> list[CompareSpec]:
        """The compare: section as a list (empty without one)."""
        c = self.compare
        return [] if c is None else [c] if isinstance(c, CompareSpec) else list(c)

    @model_validator(mode="after")
    def _compare_sources(self) -> Manifest:
        many = isinstance(self.compare, list)
        for j, c in enumerate(self.comparisons):
            where = f"compare[{j}]" if many else "compare"
            if c.baseline not in self.models:
                raise ValueError(f"{where}.baseline: '{c.baseline}' is not one of models: {', '.join(self.models)}")
            for i, cand in enumerate(c.candidates or []):
                if cand not in self.models or cand == c.baseline:
                    raise ValueError(f"{where}.candidates[{i}]: '{cand}' must be one of models and not the baseline")
        return self

    @field_validator("models")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        from andromeda.bench.sources import validate_source

        return _check_each(v, validate_source, strip="models: ")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"'{v}' is not a device; use auto, cpu, cuda, cuda:N or mps")
        return v


# ---- loading --------------------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yml") for p in resources.files("andromeda.bench.presets").iterdir()
                  if p.name.endswith(".yml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"preset '{name}' is unknown; available: {', '.join(preset_names())}")
    return resources.files("andromeda.bench.presets").joinpath(f"{name}.yml").read_text()


def load_manifest(path: str | Path | None = None, *, preset: str | None = None,
                  overrides: list[str] | None = None) -> Manifest:
    """Read, apply --set overrides (key.path=value), validate. Errors are one line."""
    if (path is None) == (preset is None):
        raise ConfigError("give a manifest file or --preset NAME (one of them)")
    if preset is not None:
        label, text = f"preset '{preset}'", preset_text(preset)
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"manifest '{p}' does not exist (or is not a file)")
        label, text = str(p), p.read_text(encoding="utf-8")
    data = read_yaml(text, label)
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a manifest is a mapping (models:, scenarios:, ...), got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    return validate(data, label)


def read_yaml(text: str, label: str) -> Any:
    """safe_load (data only, never code), with a one-line error that says where the YAML broke."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{label}: invalid YAML{where}: {problem}") from None


def validate(data: dict[str, Any], label: str = "manifest") -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{label}: {format_error(first_error(e.errors()))}") from None


_UNION_TAGS = ("CompareSpec", "list[CompareSpec]")  # compare: one spec or a list; pydantic names the branch tried
_WRONG_BRANCH = ("model_type", "list_type", "dict_type", "model_attributes_type")


def first_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to show: for a union, the one from the branch that fits the input's shape."""
    def wrong_branch(err: dict[str, Any]) -> bool:
        return err["type"] in _WRONG_BRANCH and any(part in _UNION_TAGS for part in err["loc"])

    return next((err for err in errors if not wrong_branch(err)), errors[0])


def apply_override(data: dict[str, Any], item: str) -> None:
    """`timing.budget_s=0.5`, `scenarios.0.batch=[1,2]`: values are parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{item}': use key.path=value, e.g. timing.budget_s=0.5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set '{item}': the value is not valid YAML") from None
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:i])
                raise ConfigError(f"--set '{item}': '{where}' has {len(node)} items; '{part}' is no index")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set '{item}': '{'.'.join(parts[:i])}' is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


# ---- one-line errors -----------------------------------------------------------------------
def format_error(err: dict[str, Any]) -> str:
    loc = list(err["loc"])
    path = _loc_str(loc)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown field{hint}"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "union_tag_invalid":
        name = err["input"].get("scenario")
        return f"{path}.scenario: unknown scenario {name!r}; available: {', '.join(scenarios.names())}"
    if kind == "union_tag_not_found":
        return f"{path}: each scenario needs 'scenario: NAME'; available: {', '.join(scenarios.names())}"
    if msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a whole-manifest check: its message names the field itself
            return msg
        if msg.startswith("["):  # models[i] ...
            idx, _, rest = msg.partition("] ")
            return f"{path}{idx}]: {rest}"
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or kind.startswith("too_short") else f" (got {got!r})"
    return f"{path}: {msg}{got_s}"


def _loc_str(loc: list[Any]) -> str:
    out = ""
    skip_tag = False
    for i, part in enumerate(loc):
        if skip_tag:  # the discriminator tag pydantic inserts after a scenarios index
            skip_tag = False
            continue
        if part in _UNION_TAGS:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag = i >= 1 and loc[i - 1] == "scenarios" and i + 1 < len(loc) and loc[i + 1] in scenarios.names()
        else:
            out += ("." if out else "") + str(part)
    return out or "manifest"


def _allowed_fields(loc: list[Any]) -> list[str]:
    cls: Any = Manifest
    for part in loc:
        if isinstance(part, int) or part in _UNION_TAGS:
            continue
        if cls is Manifest and part == "scenarios":
            cls = "scenario-list"
            continue
        if cls == "scenario-list":
            cls = next((c for c in scenarios.configs() if c.model_fields["scenario"].default == part), None)
            continue
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            ann = cls.model_fields[part].annotation
            args = [b for a in typing.get_args(ann) for b in (a, *typing.get_args(a))]  # X | list[X] | None
            cls = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
            continue
        return []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def json_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()
