"""Manifest: a YAML file (or a built-in preset) validated into a typed run description. Torch-free.

Loading has three steps, each with a one-line error that names the field (the CLI prints it, exit 2):
  1. text   the file is UTF-8, at most 1 MiB, plain YAML in the core schema: no tags beyond it, no
            duplicate keys, no nesting past 32 levels (schema/strict_yaml.py). Nothing is ever
            constructed from a tag: a manifest holds data, never code.
  2. schema every field has its type (strict: no bool for a number, no string for a number), its range
            (every count and time bounded, see schema/fields.py), its allowed values; unknown keys are
            refused with the allowed ones; combinations that would fail every case are refused.
  3. resources (load_manifest(resolve=True), what a run needs): the files, directories and checkpoints
            the manifest names exist and are of the right kind; every model source builds (Andromeda
            configs; hf: model types and config keys). This step imports andromeda.model (torch), and
            transformers for hf: sources; reading a finished run skips it (resolve=False).
Built-in presets live as YAML files in runs/presets/.
"""

from __future__ import annotations

import difflib
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from andromeda.errors import AndromedaError, ConfigError
from andromeda.runs.launcher import LauncherSpec, check_manifest
from andromeda.scenarios import config as scenario_configs
from andromeda.schema import strict_yaml
from andromeda.schema.fields import (
    CASES_MAX,
    DTYPES,
    SECONDS_MAX,
    Float,
    NonEmpty,
    Runs,
    Seconds,
    Seed,
    StrictModel,
    Warmup,
    check_each,
    show,
)
from andromeda.sources import spec
from andromeda.verdicts.compare_spec import CompareSpec

FORMATS = ("csv", "json", "png", "md", "html", "tex")
PEAK_TFLOPS_MAX = 1e6
THREADS_MAX = 4_096
_NAME = re.compile(r"[\w+\-][\w.+\- ]{0,99}")


class TimingSpec(StrictModel):
    warmup: Warmup = Field(2, description=(
        "Untimed calls before timing starts (compilation, caches, allocator warm-up)."))
    warmup_s: Seconds = Field(0.0, description=(
        "Also keep warming up until this many seconds have passed (0 = only the warmup count)."))
    min_runs: Runs = Field(5, description="Timed calls at least, whatever the budget.")
    max_runs: Runs = Field(100, description="Timed calls at most (>= min_runs).")
    budget_s: Float(0.0, SECONDS_MAX, lo_open=True) = Field(1.0, description=(
        "Seconds of timed calls per measurement: timing stops when the median's CI is narrow enough or "
        "this is spent."))
    target_rel_ci: Float(0.0, 1.0, lo_open=True) | None = Field(0.02, description=(
        "Stop early once the median's bootstrap CI is narrower than this fraction of it (0.02 = +-2%); "
        "null = always spend the budget."))
    flush_l2: bool = Field(False, description=(
        "CUDA: write a buffer larger than the L2 cache before each timed call, so inputs come from HBM "
        "(as triton's do_bench)."))
    cuda_graph: bool = Field(False, description=(
        "CUDA: time the call replayed from a captured CUDA graph (no Python launch overhead)."))

    @model_validator(mode="after")
    def _runs(self) -> TimingSpec:
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs: must be >= min_runs ({self.min_runs}), got {self.max_runs}")
        return self

    def to_config(self):
        from andromeda.measure.timing_config import TimingConfig

        return TimingConfig(**self.model_dump())


class ReportSpec(StrictModel):
    formats: NonEmpty(Literal[FORMATS], 6) = Field(list(FORMATS), description=(
        "Artifacts to write: csv, json, png, md, html, tex (default: all)."))


def _check_name(v: str) -> str:
    if not _NAME.fullmatch(v) or v.endswith((" ", ".")):
        raise ValueError(f"{show(v)} is not a run name: it names the folder runs/<name>-<time>, so it is 1 to 100 "
                         "letters, digits, '_', '-', '+', '.' or spaces, with no path separator and no leading '.'")
    return v


ScenarioEntry = Annotated[
    Union[tuple(scenario_configs.configs())],  # type: ignore[misc]  # noqa: UP007
    Field(discriminator="scenario"),
]


class Manifest(StrictModel):
    name: Annotated[str, AfterValidator(_check_name)] = Field("run", description=(
        "Run name: the default output folder is runs/<name>-<time>."))
    description: Annotated[str, Field(max_length=10_000)] = Field("", description=(
        "What this manifest measures, in a sentence (andromeda list shows it for presets)."))
    models: NonEmpty(str, 1000) = Field(description=(
        "Model sources to measure: andromeda:<preset>[?field=value], andromeda:<checkpoint dir>, hf:<dir "
        "| model_type | matched:<preset>>, xt:<preset> (andromeda list shows the forms)."))
    scenarios: NonEmpty(ScenarioEntry, 1000) = Field(description=(
        "What to measure, one entry per scenario with its sweep (lists are swept as a cartesian product);"
        " every model runs every entry."))
    device: str = Field("auto", description=(
        "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps; --device overrides it."))
    dtype: Literal[DTYPES] = Field("float32", description="Model dtype: float32, bfloat16 or float16.")
    seed: Seed = Field(0, description="Seed of model initialization, inputs and bootstrap resampling.")
    out: str | None = Field(None, description="Run directory (default runs/<name>-<time>); --out overrides it.")
    peak_tflops: Float(0.0, PEAK_TFLOPS_MAX, lo_open=True) | None = Field(None, description=(
        "Peak TFLOP/s that MFU is computed against, instead of the device's datasheet value."))
    # torch's intra-op threads, fixed for the whole run before any case; auto: the physical cores this process
    # may use (measure/env.py). A launcher's ranks take launcher.cpu_threads instead.
    threads: Literal["auto"] | int = Field("auto", description=(
        "Torch intra-op threads for the whole run: auto = the physical cores this process may use, or a "
        "count."))
    timing: TimingSpec = Field(TimingSpec(), description=(
        "How each timed metric is measured: warm-up, repetitions, time budget, target CI."))
    report: ReportSpec = Field(ReportSpec(), description="Which report artifacts to write.")
    compare: CompareSpec | Annotated[list[CompareSpec], Field(max_length=100)] | None = Field(None, description=(
        "Candidates against a baseline, from this manifest's models, with verdicts in <out>/compare/ (a "
        "list: several baselines)."))
    launcher: LauncherSpec | None = Field(None, description=(
        "Run every case across processes through torchrun (DDP, FSDP2, collectives); null = in this "
        "process."))
    sized_for: Literal["any", "cpu", "gpu"] = Field("any", description=(
        "The device this manifest is sized for: cpu (seconds to minutes there), gpu (hours on a CPU: "
        "refused there without --force), any."))
    cpu_counterpart: str | None = Field(None, description=(
        "With sized_for: gpu, the preset to run on a CPU instead (named in the refusal)."))

    @model_validator(mode="after")
    def _counterpart(self) -> Manifest:
        if self.cpu_counterpart is not None and self.cpu_counterpart not in preset_names():
            raise ValueError(f"cpu_counterpart: '{self.cpu_counterpart}' is not a preset; available: "
                             f"{', '.join(preset_names())}")
        return self

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
                raise ValueError(f"{where}.baseline: '{c.baseline}' is not one of models: {', '.join(self.models)}; "
                                 f"set {where}.baseline to one of them, or drop the comparison (compare: null)")
            for i, cand in enumerate(c.candidates or []):
                if cand not in self.models or cand == c.baseline:
                    raise ValueError(f"{where}.candidates[{i}]: '{cand}' must be one of models and not the baseline")
        return self

    @model_validator(mode="after")
    def _size(self) -> Manifest:
        cases = len(self.models) * sum(entry.n_points() for entry in self.scenarios)
        if cases > CASES_MAX:
            raise ValueError(f"scenarios: the sweeps plan {cases:,} cases ({len(self.models)} models); at most "
                             f"{CASES_MAX:,} in one manifest")
        return self

    @field_validator("models")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        return check_each(v, spec.check_syntax, strip="models: ")

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> Any:
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= THREADS_MAX):
            raise ValueError(f"must be auto (the physical cores) or an integer from 1 to {THREADS_MAX}, "
                             f"got {show(v)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,4})?", v):
            raise ValueError(f"{show(v)} is not a device; use auto, cpu, cuda, cuda:N or mps")
        return v


# ---- loading --------------------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yml") for p in resources.files("andromeda.runs.presets").iterdir()
                  if p.name.endswith(".yml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"preset '{name}' is unknown; available: {', '.join(preset_names())}")
    return resources.files("andromeda.runs.presets").joinpath(f"{name}.yml").read_text(encoding="utf-8")


def load_manifest(path: str | Path | None = None, *, preset: str | None = None,
                  overrides: list[str] | None = None, resolve: bool = True) -> Manifest:
    """Read, apply --set overrides (key.path=value), validate; with `resolve`, also check the files and
    model sources it names (step 3 of the module docstring; imports torch). Errors are one line."""
    try:
        return _load(path, preset, overrides, resolve)
    except AndromedaError as e:  # a file name or a library message may hold a newline: the promise is one line
        raise type(e)(" ".join(str(e).split("\n"))) from None


def _load(path, preset, overrides, resolve) -> Manifest:
    if (path is None) == (preset is None):
        raise ConfigError("give a manifest file or --preset NAME (one of them)")
    if preset is not None:
        label, text = f"preset '{preset}'", preset_text(preset)
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"manifest '{p}' does not exist (or is not a file)")
        label = str(p)
        text = strict_yaml.read_text(p, label)
    data = read_yaml(text, label)
    if data is None:
        raise ConfigError(f"{label}: the file is empty; a manifest is a mapping with at least models: and scenarios:")
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a manifest is a mapping (models:, scenarios:, ...), got {_yaml_kind(data)}")
    for item in overrides or []:
        apply_override(data, item)
    manifest = validate(data, label)
    if resolve:
        check_resources(manifest, label)
    return manifest


def _yaml_kind(data: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(data), type(data).__name__)


def read_yaml(text: str, label: str) -> Any:
    """Plain YAML (core schema, data only), with a one-line error that names the field and line."""
    return strict_yaml.load(text, label)


def validate(data: dict[str, Any], label: str = "manifest") -> Manifest:
    """The schema step: types, ranges, allowed values, combinations. Torch-free; touches no file."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{label}: {format_error(first_error(e.errors()))}") from None


def check_resources(manifest: Manifest, label: str = "manifest") -> None:
    """The resources step: files, directories, checkpoints and model sources exist, are of the right kind
    and build. Scenario data first (torch-free), then model sources (imports torch)."""
    def fail(where: str, e: Exception) -> ConfigError:
        msg = str(e).strip() or type(e).__name__
        return ConfigError(f"{label}: {where}{msg.removeprefix('models: ')}")

    for i, entry in enumerate(manifest.scenarios):
        try:
            entry.check_resources()
        except (AndromedaError, ValueError, OSError) as e:
            raise fail(f"scenarios[{i}].", e) from None
    for i, source in enumerate(manifest.models):
        try:
            spec.check_source(source)
        except (AndromedaError, OSError) as e:
            raise fail(f"models[{i}]: ", e) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """`timing.budget_s=0.5`, `scenarios.0.batch=[1,2]`: values are parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{item}': use key.path=value, e.g. timing.budget_s=0.5")
    value = strict_yaml.load(raw, f"--set '{item}'")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"[0-9]{1,9}", part) or int(part) >= len(node):  # not isdigit(): '²' is a digit
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
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "[key]"}
_WRONG_BRANCH = ("model_type", "list_type", "dict_type", "model_attributes_type", "string_type", "int_type",
                 "float_type", "bool_type", "none_required", "is_instance_of", "literal_error")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Annotated, unions, lists, dicts)."""
    out, stack = [], [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            if a not in out:
                out.append(a)
        else:
            stack.extend(typing.get_args(a))
    return out


def _field(cls: type[BaseModel], part: str) -> tuple[str, Any] | None:
    for name, info in cls.model_fields.items():
        if part in (name, info.alias):
            return info.alias or name, info.annotation
    return None


def _walk(loc: list[Any] | tuple[Any, ...]) -> tuple[str, list[type[BaseModel]], bool]:
    """A pydantic error location as the manifest's path (union branch tags dropped), the models that can
    sit at its end, and whether it passed through a union branch tag."""
    path, cands, tagged = "", [Manifest], False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        if len(cands) > 1 and (chosen := [c for c in cands if _scenario_tag(c) == part]):
            cands = chosen  # the discriminator pydantic puts after scenarios[i]
            continue
        found = next((f for c in cands if (f := _field(c, part)) is not None), None)
        if found is not None:
            path += ("." if path else "") + found[0]
            cands = _models_in(found[1])
            continue
        chosen = [c for c in cands if part == c.__name__]
        if chosen or part in _TYPE_TAGS or "[" in part or "(" in part:  # a union branch: str, ModelRef, list[...]
            cands, tagged = chosen or cands, True
            continue
        path += ("." if path else "") + str(part)  # a mapping key (max_abs_diff_by_dtype.float32)
        cands = []
    return path or "manifest", cands, tagged


def _scenario_tag(cls: type[BaseModel]) -> Any:
    f = cls.model_fields.get("scenario")
    return f.default if f is not None else None


def first_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to show: for a union, the one from the branch that fits the input's shape."""
    def wrong_branch(err: dict[str, Any]) -> bool:
        return err["type"] in _WRONG_BRANCH and _walk(err["loc"])[2]

    return next((err for err in errors if not wrong_branch(err)), errors[0])


def format_error(err: dict[str, Any]) -> str:
    loc = list(err["loc"])
    path, cands, _ = _walk(loc)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return f"{path}: unknown field{hint}" + (f" (did you mean '{near[0]}'?)" if near else "")
    if kind == "missing":
        return f"{path}: required field is missing"
    names = ", ".join(scenario_configs.names())
    if kind == "union_tag_invalid":
        return f"{path}.scenario: unknown scenario {show(err['input'].get('scenario'))}; available: {names}"
    if kind == "union_tag_not_found":
        return f"{path}: each scenario needs 'scenario: NAME'; available: {names}"
    if msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a whole-manifest check: its message names the field itself
            return msg
        last = re.split(r"[.\]]", path)[-1] or path
        msg = msg.removeprefix(f"{last}: ")  # "data: ..." from a check of the field `data` itself
        if msg.startswith("["):  # models[i] ..., ranks[i] ...
            idx, _, rest = msg.partition("] ")
            return f"{path}{idx}]: {rest}"
        head = re.match(r"([A-Za-z_]\w*)[.\[:]", msg)
        if head and len(cands) == 1 and _field(cands[0], head.group(1)):  # "layout: ..." of the entry at path
            return f"{path}.{msg}"
        return f"{path}: {msg}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        msg = "Input should be a mapping"
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or kind.startswith("too_short") else f" (got {show(got)})"
    return f"{path}: {msg}{got_s}"


def _allowed_fields(loc: list[Any]) -> list[str]:
    _, cands, _ = _walk(loc)
    if len(cands) != 1:
        return []
    return [info.alias or name for name, info in cands[0].model_fields.items()]


def dump_manifest(manifest: Manifest) -> str:
    """The manifest as YAML that load_manifest (and yaml.safe_load) read back unchanged: what a run should
    write as manifest.yml (a string such as '1e5' or 'yes' is quoted, so it stays a string)."""
    return strict_yaml.dump(manifest.model_dump(mode="json", by_alias=True))


def json_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()


__all__ = ["Manifest", "TimingSpec", "ReportSpec", "load_manifest", "validate",
           "check_resources", "read_yaml", "dump_manifest", "apply_override", "preset_names", "preset_text",
           "format_error", "json_schema", "FORMATS"]
