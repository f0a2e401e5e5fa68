"""The claims file: the spec's claims (latency, memory, context) and the reference models they name,
validated strictly; load_claims() reads the built-in verdicts/claims.yml or a user's YAML file (the file
documents each kind). claims.py checks them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from andromeda.errors import ConfigError
from andromeda.model.config import PRESETS, ModelConfig
from andromeda.schema import strict_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ClaimBase(_Strict):
    id: str
    text: str
    where: str = ""
    preset: str = "andromeda"


class LatencyClaim(_ClaimBase):
    kind: Literal["latency"]
    tokens: Annotated[int, Field(gt=0)]
    batch: Annotated[int, Field(gt=0)] = 1
    max_ms: Annotated[float, Field(gt=0)]


class MemoryClaim(_ClaimBase):
    kind: Literal["memory"]
    reference: str
    factor: Annotated[float, Field(gt=0)]
    bytes_per_elem: Annotated[float, Field(gt=0)] = 2.0  # fp16 weights and KV cache
    context: Annotated[int, Field(gt=0)] = 2048


class ContextClaim(_ClaimBase):
    kind: Literal["context"]
    min_tokens: Annotated[int, Field(gt=0)]
    max_tokens: Annotated[int, Field(gt=0)]
    bytes_per_elem: Annotated[float, Field(gt=0)] = 2.0


Claim = Annotated[Union[LatencyClaim, MemoryClaim, ContextClaim], Field(discriminator="kind")]  # noqa: UP007


class Reference(_Strict):
    name: str
    citation: str = ""
    published_params: float | None = None
    config: dict[str, Any]


class ClaimsFile(_Strict):
    plausible_mfu: Annotated[float, Field(gt=0, le=1)] = 0.5
    claims: Annotated[list[Claim], Field(min_length=1)]
    references: dict[str, Reference] = {}


def builtin_claims_text() -> str:
    return resources.files("andromeda.verdicts").joinpath("claims.yml").read_text(encoding="utf-8")


def load_claims(path: str | Path | None = None) -> ClaimsFile:
    """The built-in claims (path None) or a YAML file; errors name the field, in one line."""
    if path is None:
        label, text = "built-in claims.yml", builtin_claims_text()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"claims file '{p}' does not exist (or is not a file)")
        label, text = str(p), p.read_text(encoding="utf-8")
    data = strict_yaml.load(text, label)
    try:
        cf = ClaimsFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if x not in ("latency", "memory", "context"))
        raise ConfigError(f"{label}: {loc}: {err['msg']}") from None
    for c in cf.claims:
        where = f"{label}: claim '{c.id}'"
        if c.preset not in PRESETS:
            raise ConfigError(f"{where}: preset '{c.preset}' is unknown; available: {', '.join(PRESETS)}")
        if isinstance(c, MemoryClaim) and c.reference not in cf.references:
            raise ConfigError(f"{where}: reference '{c.reference}' is not under references: "
                              f"({', '.join(cf.references) or 'none'})")
        if isinstance(c, ContextClaim) and c.max_tokens < c.min_tokens:
            raise ConfigError(f"{where}: max_tokens ({c.max_tokens}) < min_tokens ({c.min_tokens})")
    for key, ref in cf.references.items():
        try:
            ModelConfig.from_dict(ref.config)
        except ConfigError as e:
            raise ConfigError(f"{label}: references.{key}.config: {e}") from None
    return cf


__all__ = ["ClaimsFile", "LatencyClaim", "MemoryClaim", "ContextClaim", "Reference", "Claim", "load_claims",
           "builtin_claims_text"]
