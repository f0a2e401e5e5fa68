"""Model source strings, parsed and checked before anything is built (sources/models.py builds them).

  check_syntax(source)  the string's shape: kind, name, ?key=value pairs, compile mode. Torch-free.
  check_source(source)  what building it will need, checked now, so that no case fails on it later:
      andromeda:/xt:  the preset or checkpoint directory (config.json and weights) and every config field;
                      xt: x-transformers installed and the flags it has. Imports andromeda.model (torch).
      hf:             a local checkpoint directory with config.json and weights, or a transformers model
                      type that has a causal LM, and every ?key a field of its config class (with a
                      "did you mean"). Imports transformers (and so torch) lazily; missing, the error
                      names the extra that installs it.

Errors are ConfigError/AndromedaError messages without the field path; the manifest adds `models[i]: `.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from andromeda.errors import AndromedaError, ConfigError, missing_extra

KINDS = ("andromeda", "hf", "xt")
COMPILE_KEY = "compile"  # a source option, not a model field: ?compile=default | max-autotune | reduce-overhead
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# an Andromeda checkpoint directory, as andromeda.model.checkpoint writes it
CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.pt")
CHECKPOINT_EMBEDDING = "embedding.json"
HF_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
MAX_PARAMS = 10**13  # a source past this many parameters is a typo (depth=1000000), not a model


# ---- syntax ----------------------------------------------------------------------------------
def parse_source(source: str) -> tuple[str, str, dict[str, Any]]:
    """'andromeda:base?depth=12' -> ('andromeda', 'base', {'depth': 12})."""
    if not isinstance(source, str) or ":" not in source:
        raise ConfigError(
            f"models: '{source}' is not a model source; use andromeda:<preset>, hf:<path|type> or xt:<preset>"
        )
    kind, rest = source.split(":", 1)
    if kind not in KINDS:
        raise ConfigError(f"models: source kind '{kind}' is unknown in '{source}'; allowed: {', '.join(KINDS)}")
    name, _, query = rest.partition("?")
    if not name:
        raise ConfigError(f"models: '{source}' names no model after '{kind}:'")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    if query and not pairs:
        raise ConfigError(f"models: cannot parse overrides '{query}' in '{source}'; use key=value&key=value")
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ConfigError(f"models: '{source}' sets {k} twice; keep one")
        seen.add(k)
    overrides = {k: _parse_value(v) for k, v in pairs if k != COMPILE_KEY}
    return kind, name, overrides


def compile_mode(source: str) -> str | None:
    """The torch.compile mode a source asks for with ?compile=MODE (true = default), or None."""
    query = source.partition("?")[2]
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == COMPILE_KEY:
            mode = "default" if v in ("", "true", "1") else v
            if mode not in COMPILE_MODES:
                raise ConfigError(f"models: '{source}': compile={v} is not a torch.compile mode; "
                                  f"allowed: true, {', '.join(COMPILE_MODES)}")
            return mode
    return None


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def check_syntax(source: str) -> None:
    """The cheap checks: the string parses. Torch-free."""
    kind, name, _ = parse_source(source)
    compile_mode(source)
    if kind == "hf" and name.startswith("matched:") and not name.removeprefix("matched:"):
        raise ConfigError(f"models: '{source}': hf:matched: needs an Andromeda preset, e.g. hf:matched:tiny")


def is_path(name: str) -> bool:
    """A source name that names a directory rather than a preset or model type."""
    return "/" in name or "\\" in name or name.startswith((".", "~")) or Path(name).exists()


# ---- Andromeda configs -------------------------------------------------------------------------
def _model_config_module():
    try:
        from andromeda.model import config
    except ImportError as e:  # andromeda.model imports torch
        raise AndromedaError(f"checking an Andromeda model config needs torch, which failed to import "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); install torch") from e
    return config


def resolve_config(name: str, overrides: dict):
    """A preset name, or an Andromeda checkpoint directory (its config.json), with field overrides."""
    config = _model_config_module()
    path = Path(name)
    if (path / CHECKPOINT_CONFIG).is_file():
        saved = json.loads((path / CHECKPOINT_CONFIG).read_text())
        return config.ModelConfig.from_dict({**saved, **overrides})
    return config.from_name(name, **overrides)


def split_matched(overrides: dict) -> tuple[dict, dict]:
    """hf:matched:<preset>?...: Andromeda config fields (they shape the Llama) and the rest (Llama config keys)."""
    fields = set(_model_config_module().FIELD_NAMES)
    return ({k: v for k, v in overrides.items() if k in fields},
            {k: v for k, v in overrides.items() if k not in fields})


def andromeda_config(source: str):
    kind, name, overrides = parse_source(source)
    if kind == "hf" and name.startswith("matched:"):
        return _model_config_module().from_name(name.split(":", 1)[1], **split_matched(overrides)[0])
    if kind not in ("andromeda", "xt"):
        raise ConfigError(f"models: '{source}' is not an Andromeda-shaped source")
    return resolve_config(name, overrides)


# ---- hf:matched: a Llama doing the same work ------------------------------------------------------
MATCH_RTOL = 0.02  # ARCHITECTURE.md (Floors): a baseline's parameters and FLOPs per token within 2%
MATCH_TARGET = 0.01  # what the width search aims for first (regress.py's shape check allows 1% in parameters)
MATCH_ALIGN = (64, 32, 16, 8, 4, 2, 1)  # FFN widths tried, coarsest first: a ragged width would slow the Llama


@dataclass(frozen=True)
class MatchedFFN:
    """The Llama FFN width of hf:matched:<preset> and how close the Llama comes to the Andromeda model."""

    intermediate_size: int
    align: int  # the width is a multiple of this (1: no alignment reached the target)
    params_ratio: float  # Llama / Andromeda parameters
    flops_ratio: float  # Llama / Andromeda forward FLOPs per token (at one token; see matched_ffn)

    @property
    def within(self) -> bool:
        return max(abs(self.params_ratio - 1), abs(self.flops_ratio - 1)) <= MATCH_RTOL

    def to_dict(self) -> dict[str, Any]:
        return {"intermediate_size": self.intermediate_size, "align": self.align,
                "params_ratio": self.params_ratio, "flops_ratio": self.flops_ratio, "within_2pct": self.within}


def llama_params(cfg, intermediate_size: int) -> int:
    """Parameters of the Llama llama_config_for(cfg) builds with this FFN width (Llama has no biases):
    embeddings V*d; per layer q (d x H*D), k and v (d x Hkv*D each), o (H*D x d), gate and up (d x I
    each), down (I x d), two RMSNorm gains (d each); the final RMSNorm (d); an untied head (V*d)."""
    d, hd, v = cfg.dim, cfg.dim_head, cfg.num_tokens
    layer = 2 * d * cfg.heads * hd + 2 * d * cfg.n_kv_heads * hd + 3 * d * intermediate_size + 2 * d
    return v * d + cfg.depth * layer + d + (0 if cfg.tie_embeddings else v * d)


def llama_facts(cfg, intermediate_size: int):
    """ModelFacts of that Llama, analytic (the shape fields are the Andromeda model's, the FFN gated)."""
    from dataclasses import replace

    from andromeda.measure.facts import facts_from_config

    facts = facts_from_config(cfg)
    params = llama_params(cfg, intermediate_size)
    return replace(facts, params=params, non_embedding_params=params - cfg.num_tokens * cfg.dim,
                   ff_hidden=intermediate_size, ff_glu=True, abs_pos_emb=False)


def measure_match(cfg, intermediate_size: int, align: int = 1) -> MatchedFFN:
    """The ratios of the Llama with this FFN width to the Andromeda model of cfg."""
    from andromeda.measure.facts import facts_from_config
    from andromeda.measure.flops import forward_flops

    facts = facts_from_config(cfg)
    return MatchedFFN(intermediate_size, align, llama_params(cfg, intermediate_size) / facts.params,
                      forward_flops(llama_facts(cfg, intermediate_size), 1, 1).total
                      / forward_flops(facts, 1, 1).total)


def matched_ffn(cfg) -> MatchedFFN:
    """The Llama FFN width doing the Andromeda model's work: parameters and forward FLOPs per token both
    as close as the width allows.

    The FFN is the only matmul that differs (attention, projections and the head have the same shapes),
    so the width near (Andromeda's FFN matrices x ff_hidden) / 3 matches both: 2/3 of ff_hidden for
    Andromeda's two ungated matrices. FLOPs per token are compared at one token, where the FFN's share is
    largest; the attention FLOPs are the same on both sides, so the ratio at any longer sequence is
    closer to 1. Widths: the multiple of 64 (then 32, 16, ... 1) nearest that target whose worse ratio
    is within MATCH_TARGET; else the best width found."""
    target = cfg.ff_hidden * (3 if cfg.ff_glu else 2) / 3

    def worst(m: MatchedFFN) -> float:
        return max(abs(m.params_ratio - 1), abs(m.flops_ratio - 1))

    best = None
    for align in MATCH_ALIGN:
        low = max(align, int(target // align) * align)
        m = min((measure_match(cfg, w, align) for w in (low, low + align)), key=worst)
        if worst(m) <= MATCH_TARGET:
            return m
        best = m if best is None or worst(m) < worst(best) else best
    return best


def llama_config_for(cfg, intermediate_size: int | None = None) -> dict[str, Any]:
    """A Llama config of an Andromeda config's shape (vocab, dim, depth, heads, KV heads, head dim,
    positions, tied embeddings or not) with the FFN width of matched_ffn(cfg), or the one given."""
    width = matched_ffn(cfg).intermediate_size if intermediate_size is None else intermediate_size
    return dict(
        vocab_size=cfg.num_tokens, hidden_size=cfg.dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.dim_head,
        intermediate_size=width, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def matched_llama(source: str, cfg, hf_keys: dict[str, Any]) -> tuple[dict[str, Any], MatchedFFN]:
    """hf:matched:'s Llama config keys (?intermediate_size=N sets the width by hand) and its match.

    ConfigError when no width brings both ratios within MATCH_RTOL (e.g. a learned position table that a
    Llama has no counterpart of); ?intermediate_size=N builds it anyway, the ratios stated beside the
    comparison's numbers."""
    if "intermediate_size" in hf_keys and isinstance(hf_keys["intermediate_size"], int):
        match = measure_match(cfg, hf_keys["intermediate_size"])
    else:
        match = matched_ffn(cfg)
        if not match.within:
            raise ConfigError(
                f"models: '{source}': no Llama FFN width does the Andromeda model's work within "
                f"{100 * MATCH_RTOL:g}% (best: intermediate_size={match.intermediate_size}, params "
                f"{match.params_ratio:.3f}x, FLOPs/token {match.flops_ratio:.3f}x); "
                "set ?intermediate_size=N to build it anyway")
    return {**llama_config_for(cfg, match.intermediate_size), **hf_keys}, match


def xt_unsupported(cfg) -> str | None:
    if cfg.parallel_block or cfg.pos_interpolation_factor != 1.0 or cfg.ff_glu or cfg.deepnorm:
        return ("parallel_block, pos_interpolation_factor, ff_glu and deepnorm have no equivalent in this "
                "x-transformers version")
    return None


def _read_config_dir(path: Path, config_name: str, hint: str, *, what: str, prefix: str = "") -> dict[str, Any]:
    """The JSON mapping in `path`/`config_name`, or a one-line ConfigError saying what is missing (`what` names
    the directory's kind, `prefix` the source kind before a path)."""
    if not path.exists():
        raise ConfigError(f"{what} '{path}' does not exist; {hint}")
    if not path.is_dir():
        raise ConfigError(f"{prefix}'{path}' is a file; {hint}")
    cfg_file = path / config_name
    if not cfg_file.is_file():
        raise ConfigError(f"{prefix}'{path}' has no {config_name}; {hint}")
    try:
        saved = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{prefix}'{cfg_file}' is not readable JSON ({type(e).__name__}); {hint}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{prefix}'{cfg_file}' holds {type(saved).__name__}, not a model config mapping")
    return saved


def check_checkpoint_dir(path: Path, *, weights: bool = True) -> dict[str, Any]:
    """An Andromeda checkpoint directory: config.json (a mapping) and weights; its saved config."""
    hint = f"an Andromeda checkpoint is a directory with {CHECKPOINT_CONFIG} and {CHECKPOINT_WEIGHTS[0]}"
    saved = _read_config_dir(path, CHECKPOINT_CONFIG, hint, what="checkpoint directory")
    if weights and not any((path / w).is_file() for w in CHECKPOINT_WEIGHTS):
        raise ConfigError(f"'{path}' has no weights ({' or '.join(CHECKPOINT_WEIGHTS)}); {hint}")
    if weights and (path / CHECKPOINT_EMBEDDING).is_file():
        raise ConfigError(f"'{path}' was saved with a custom embedding provider ({CHECKPOINT_EMBEDDING}); such a "
                          "checkpoint loads in Python only: load_checkpoint(path, embedding=Provider(...))")
    return saved


def _check_params(cfg, source: str) -> None:
    from andromeda.measure.facts import facts_from_config

    params = facts_from_config(cfg).params
    if params > MAX_PARAMS:
        raise ConfigError(f"models: '{source}' has {params:.3g} parameters; at most {MAX_PARAMS:.0e} "
                          "(a typo in depth or dim?)")


# ---- the deep check ----------------------------------------------------------------------------
def check_source(source: str) -> None:
    """Every check that can be made before building: files, configs, libraries. See the module docstring."""
    kind, name, overrides = parse_source(source)
    compile_mode(source)
    if kind == "hf":
        _check_hf(source, name, overrides)
        return
    if is_path(name):
        check_checkpoint_dir(Path(name).expanduser(), weights=kind == "andromeda")
    cfg = resolve_config(name, overrides)
    _check_params(cfg, source)
    if kind == "xt":
        if importlib.util.find_spec("x_transformers") is None:
            raise missing_extra("x-transformers", "xt")
        if (reason := xt_unsupported(cfg)) is not None:
            raise ConfigError(f"models: '{source}': {reason}")


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise missing_extra("transformers", "hf") from e
    return transformers


def _check_hf(source: str, name: str, overrides: dict) -> None:
    if name.startswith("matched:"):
        config = _model_config_module()
        shape, hf_keys = split_matched(overrides)
        cfg = config.from_name(name.split(":", 1)[1], **shape)
        _check_params(cfg, source)
        base, _ = matched_llama(source, cfg, hf_keys)
        if hf_keys:
            check_hf_keys(source, "llama", hf_keys, base=base)
        else:
            _transformers()
        return
    if is_path(name):
        model_type = _check_hf_dir(Path(name).expanduser())
        if overrides:
            check_hf_keys(source, model_type, overrides)
        else:
            check_hf_model_type(source, model_type)
        return
    check_hf_keys(source, name, overrides)


def _check_hf_dir(path: Path) -> str:
    hint = "a Hugging Face checkpoint directory holds config.json and weights (save_pretrained writes them)"
    saved = _read_config_dir(path, "config.json", hint, what="hf: directory", prefix="hf: ")
    if not isinstance(saved.get("model_type"), str):
        raise ConfigError(f"hf: '{path / 'config.json'}' names no model_type")
    if not any(any(path.glob(pattern)) for pattern in HF_WEIGHTS):
        raise ConfigError(f"hf: '{path}' holds no weights (*.safetensors or pytorch_model.bin); {hint}")
    return saved["model_type"]


def check_hf_model_type(source: str, model_type: str):
    """The transformers config class of a causal-LM model type, or a one-line error with a did-you-mean."""
    _transformers()
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    if model_type not in CONFIG_MAPPING:
        near = difflib.get_close_matches(model_type, list(CAUSAL), n=3)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else "e.g. llama, gpt2, mistral, qwen2"
        raise ConfigError(f"models: '{source}': '{model_type}' is neither a local directory nor a transformers "
                          f"model type ({hint})")
    if model_type not in CAUSAL:
        near = difflib.get_close_matches(model_type, list(CAUSAL), n=3)
        hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
        raise ConfigError(f"models: '{source}': transformers has no causal LM for model type '{model_type}'{hint}")
    return CONFIG_MAPPING[model_type]


def check_hf_keys(source: str, model_type: str, keys: dict[str, Any], base: dict[str, Any] | None = None) -> None:
    """Every ?key=value is a field of the model type's config class, with a value of the field's type."""
    cls = check_hf_model_type(source, model_type)
    from transformers import AutoConfig

    try:
        default = cls().to_dict()
    except Exception:  # noqa: BLE001 - a config class that needs arguments: its keys are checked by building
        default = {}
    known = set(default) | set(getattr(cls, "attribute_map", {}))
    try:
        import inspect

        known |= {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    except (TypeError, ValueError):
        pass
    try:
        built = hf_config(AutoConfig, model_type, {**(base or {}), **keys}).to_dict()
    except Exception as e:  # noqa: BLE001 - transformers' own check of the values: any failure is the user's
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 200 else why[:197] + "..."
        raise ConfigError(f"models: '{source}': transformers refuses this {cls.__name__}: {why}") from None
    for key, value in keys.items():
        if default and key in set(built) - set(default):  # set as a stray attribute: no field of the class
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"models: '{source}': {key} is not a field of {cls.__name__}{hint}")
        want = default.get(getattr(cls, "attribute_map", {}).get(key, key))
        if want is not None and not _same_kind(value, want):
            raise ConfigError(f"models: '{source}': {key}={value!r} should be {type(want).__name__} "
                              f"like its default {want!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def hf_config(auto_config, model_type: str, kw: dict[str, Any]):
    """AutoConfig.for_model, also for head_dim x heads != hidden_size (Andromeda's 2.5B: 24 x 128 over 2560).

    transformers' config check requires hidden_size to be a multiple of the head count although Llama's
    modules take head_dim from the config; such a shape is built with a head count that passes the check,
    then given its real head counts before the model is created."""
    heads, hidden, head_dim = kw.get("num_attention_heads"), kw.get("hidden_size"), kw.get("head_dim")
    if not (heads and hidden and head_dim) or hidden % heads == 0:
        return auto_config.for_model(model_type, **kw)
    placeholder = {"num_attention_heads": 1, "num_key_value_heads": 1}
    config = auto_config.for_model(model_type, **{**kw, **placeholder})
    config.num_attention_heads = heads
    config.num_key_value_heads = kw.get("num_key_value_heads", heads)
    return config


__all__ = ["KINDS", "COMPILE_KEY", "COMPILE_MODES", "parse_source", "compile_mode", "check_syntax", "check_source",
           "resolve_config", "split_matched", "andromeda_config", "llama_config_for", "xt_unsupported",
           "MATCH_RTOL", "MatchedFFN", "matched_ffn", "measure_match", "matched_llama", "llama_params", "llama_facts",
           "check_checkpoint_dir", "check_hf_model_type", "check_hf_keys", "hf_config", "is_path"]
