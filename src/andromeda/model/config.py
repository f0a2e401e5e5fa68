"""ModelConfig: every setting of the Andromeda spec, validated at construction.

Field names follow the spec (../shared/spec/001) where it has one. A setting either takes
effect or the config refuses it with a message that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from andromeda.errors import ConfigError

# The attention backends model/backends registers (a test holds the registry to this list). Named here so a
# config validates without importing torch: manifests are checked before the run imports it.
ATTN_BACKENDS = ("eager", "sdpa", "flex", "triton")

NormType = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "silu", "relu"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    # vocabulary and context
    num_tokens: int = 50432
    max_seq_len: int = 8192
    # shape
    dim: int = 2560
    depth: int = 32
    heads: int = 24
    dim_head: int = 128
    kv_heads: int | None = None  # None = heads (MHA); 1 = multi-query (spec: attn_one_kv_head)
    ff_mult: float = 4.0
    ff_inner_dim: int | None = None  # the hidden size instead of int(dim * ff_mult), e.g. to match a Llama FFN
    ff_glu: bool = False  # gated FFN: act(W1 x) * (W3 x); with silu this is SwiGLU
    ff_activation: Activation = "gelu"
    ff_bias: bool = True
    attn_bias: bool = False
    causal: bool = True
    # positions
    use_abs_pos_emb: bool = False
    alibi_pos_bias: bool = False
    alibi_num_heads: int | None = None  # None = all heads; the first n heads get ALiBi
    rotary_pos_emb: bool = False
    rotary_xpos: bool = False  # rotary with xPos scaling (turns rotary on)
    rotary_dim: int | None = None  # None = dim_head // 2 (x-transformers' default partial rotary)
    rotary_theta: float = 10000.0
    xpos_scale_base: int = 512
    pos_interpolation_factor: float = 1.0  # positions are divided by this (positional interpolation)
    # token shift, attention variants, norms
    shift_tokens: int = 0
    qk_norm: bool = False
    qk_norm_dim_scale: bool = False  # learned per-head, per-dimension gains on normalized q and k
    qk_norm_scale: float = 10.0  # logit scale used with QK-norm (replaces 1/sqrt(dim_head))
    deepnorm: bool = False
    parallel_block: bool = False
    norm: NormType = "layernorm"
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dropout: float = 0.0  # on each sublayer's output (attention and feed-forward)
    emb_dropout: float = 0.0
    init_std: float = 0.02
    # kernels
    attn_backend: str = "auto"  # "auto" picks the fastest backend that supports this config

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def n_kv_heads(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def n_alibi_heads(self) -> int:
        if not self.alibi_pos_bias:
            return 0
        return self.heads if self.alibi_num_heads is None else self.alibi_num_heads

    @property
    def use_rotary(self) -> bool:
        return self.rotary_pos_emb or self.rotary_xpos

    @property
    def rot_dim(self) -> int:
        if not self.use_rotary:
            return 0
        return self.rotary_dim if self.rotary_dim is not None else self.dim_head // 2

    @property
    def ff_hidden(self) -> int:
        return self.ff_inner_dim if self.ff_inner_dim is not None else int(self.dim * self.ff_mult)

    @property
    def attn_scale(self) -> float:
        """The logit scale every backend uses: qk_norm_scale under QK-norm, else 1/sqrt(dim_head)."""
        return self.qk_norm_scale if self.qk_norm else self.dim_head**-0.5

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(_unknown_msg(sorted(unknown)[0]))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a mapping of field -> value, got {type(data).__name__}")
        unknown = [k for k in data if k not in FIELD_NAMES]
        if unknown:
            raise ConfigError(_unknown_msg(unknown[0]))
        return cls(**data)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _unknown_msg(key: str) -> str:
    import difflib

    near = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else f"; allowed: {', '.join(FIELD_NAMES)}"
    return f"model.{key}: unknown config field{hint}"


def _check_types(cfg: ModelConfig) -> None:
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(
                f"model.{f.name}: expected {_describe(hints[f.name])}, got {value!r} ({type(value).__name__})"
            )


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return tp.__name__


def _check_values(c: ModelConfig) -> None:
    def need(ok: bool, name: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"model.{name}: {msg}")

    for name in ("num_tokens", "max_seq_len", "dim", "depth", "heads", "dim_head", "xpos_scale_base"):
        need(getattr(c, name) > 0, name, f"must be a positive integer, got {getattr(c, name)}")
    need(c.ff_mult > 0, "ff_mult", f"must be > 0, got {c.ff_mult}")
    need(c.ff_inner_dim is None or c.ff_inner_dim > 0, "ff_inner_dim", "must be a positive integer or null")
    need(c.kv_heads is None or c.kv_heads > 0, "kv_heads", f"must be a positive integer, got {c.kv_heads}")
    need(
        c.heads % c.n_kv_heads == 0,
        "kv_heads",
        f"must divide heads ({c.heads}); got {c.n_kv_heads}. Use 1 for multi-query attention",
    )
    if c.alibi_num_heads is not None:
        need(c.alibi_pos_bias, "alibi_num_heads", "is set but alibi_pos_bias is false; set alibi_pos_bias: true")
        need(
            1 <= c.alibi_num_heads <= c.heads,
            "alibi_num_heads",
            f"must be between 1 and heads ({c.heads}), got {c.alibi_num_heads}",
        )
    need(c.shift_tokens >= 0, "shift_tokens", f"must be >= 0, got {c.shift_tokens}")
    need(
        c.shift_tokens + 1 <= c.dim,
        "shift_tokens",
        f"splits dim into shift_tokens + 1 chunks; {c.shift_tokens + 1} chunks exceed dim {c.dim}",
    )
    if c.use_rotary:
        need(
            c.rot_dim % 2 == 0 and 2 <= c.rot_dim <= c.dim_head,
            "rotary_dim",
            f"must be even and between 2 and dim_head ({c.dim_head}), got {c.rot_dim}",
        )
        need(c.rotary_theta > 0, "rotary_theta", "must be > 0")
    elif c.rotary_dim is not None:
        raise ConfigError("model.rotary_dim: is set but rotary is off; set rotary_pos_emb or rotary_xpos: true")
    need(
        not c.rotary_xpos or c.causal,
        "rotary_xpos",
        "xPos needs causal attention (its decay is only defined for keys before the query); "
        "set causal: true or rotary_xpos: false",
    )
    need(
        c.pos_interpolation_factor >= 1.0 and math.isfinite(c.pos_interpolation_factor),
        "pos_interpolation_factor",
        f"must be a finite number >= 1 (1 = off), got {c.pos_interpolation_factor}",
    )
    need(
        c.pos_interpolation_factor == 1.0 or c.use_rotary or c.alibi_pos_bias,
        "pos_interpolation_factor",
        "scales rotary/ALiBi positions but neither is on; turn one on or set it to 1",
    )
    need(c.qk_norm or not c.qk_norm_dim_scale, "qk_norm_dim_scale", "needs qk_norm: true")
    _check_inert(c)
    need(c.qk_norm_scale > 0, "qk_norm_scale", "must be > 0")
    need(
        not (c.deepnorm and c.parallel_block),
        "deepnorm",
        "DeepNorm is a post-norm residual x <- LN(a*x + f(x)); it cannot be combined with parallel_block",
    )
    for name in ("dropout", "emb_dropout"):
        need(0.0 <= getattr(c, name) < 1.0, name, f"must be in [0, 1), got {getattr(c, name)}")
    need(c.norm_eps > 0, "norm_eps", "must be > 0")
    need(c.init_std > 0, "init_std", "must be > 0")

    allowed = ("auto", *ATTN_BACKENDS)
    need(c.attn_backend in allowed, "attn_backend",
         f"unknown backend '{c.attn_backend}'; allowed: {', '.join(allowed)}")


# A refinement takes effect only with the feature it refines: (field, whether it acts, the fix). Set to
# anything but its default without that feature, it would change nothing, so the config refuses it.
_REFINEMENTS = (
    ("xpos_scale_base", lambda c: c.rotary_xpos, "set rotary_xpos: true or leave xpos_scale_base out"),
    ("rotary_theta", lambda c: c.use_rotary,
     "set rotary_pos_emb or rotary_xpos: true, or leave rotary_theta out"),
    ("qk_norm_scale", lambda c: c.qk_norm,
     "set qk_norm: true or leave qk_norm_scale out (without QK-norm the scale is 1/sqrt(dim_head))"),
    ("ff_mult", lambda c: c.ff_inner_dim is None,
     "ff_inner_dim sets the hidden size and overrides it; give one of ff_mult and ff_inner_dim"),
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def _check_inert(c: ModelConfig) -> None:
    for name, acts, fix in _REFINEMENTS:
        value = getattr(c, name)
        if value != _DEFAULTS[name] and not acts(c):
            raise ConfigError(f"model.{name}: {value} has no effect in this config; {fix}")


# ---- presets --------------------------------------------------------------------------------
# The spec's feature set, shared by every preset so that small presets exercise the same code paths.
SPEC_FEATURES: dict[str, Any] = dict(
    use_abs_pos_emb=False,
    alibi_pos_bias=True,
    rotary_xpos=True,
    shift_tokens=1,
    kv_heads=1,
    qk_norm=True,
    qk_norm_dim_scale=True,
)

PRESETS: dict[str, dict[str, Any]] = {
    # milliseconds on a CPU; the byte tokenizer needs num_tokens >= 259
    "tiny": dict(SPEC_FEATURES, num_tokens=320, max_seq_len=256, dim=64, depth=2, heads=4, dim_head=16,
                 alibi_num_heads=2),
    "small": dict(SPEC_FEATURES, num_tokens=50432, max_seq_len=4096, dim=768, depth=12, heads=12,
                  dim_head=64, alibi_num_heads=6),
    "base": dict(SPEC_FEATURES, num_tokens=50432, max_seq_len=8192, dim=1024, depth=24, heads=16,
                 dim_head=64, alibi_num_heads=8),
    "1b": dict(SPEC_FEATURES, num_tokens=50432, max_seq_len=8192, dim=2048, depth=20, heads=16,
               dim_head=128, alibi_num_heads=8),
    # exactly the spec's default parameters (../shared/spec/001, "Model Parameters")
    "andromeda": dict(SPEC_FEATURES, num_tokens=50432, max_seq_len=8192, dim=2560, depth=32, heads=24,
                      dim_head=128, alibi_num_heads=12),
}


def from_name(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, with field overrides: from_name("base", depth=12)."""
    if name not in PRESETS:
        raise ConfigError(f"model preset '{name}' is unknown; available: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})


__all__ = ["ModelConfig", "PRESETS", "SPEC_FEATURES", "from_name", "FIELD_NAMES"]
