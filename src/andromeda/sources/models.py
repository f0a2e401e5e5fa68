"""Model sources: a string names a model; build() returns the model, a tokenizer and its facts.

  andromeda:<preset>[?field=value&...]   an Andromeda preset with config overrides
  andromeda:<checkpoint dir>[?...]        an Andromeda checkpoint (config.json + weights), e.g. from training
  hf:<local dir>                          a Hugging Face causal LM from a local checkpoint
  hf:<model_type>[?key=value&...]         a HF causal LM with random weights from a config (e.g. hf:llama?...)
  hf:matched:<preset>[?...]               a Llama doing the work of an Andromeda preset, random weights: its
                                          shape, with the (gated) FFN width that brings parameters and FLOPs
                                          per token within 2% (source_spec.matched_ffn); Andromeda fields,
                                          e.g. max_seq_len, shape it; other keys go to its config
  xt:<preset>[?field=value&...]           the x-transformers model with the same flags as an Andromeda preset

Any source takes ?compile=true|default|max-autotune|... : the same model with its forward under
torch.compile, so eager and compiled run side by side in one manifest.

Nothing downloads: HF checkpoints and tokenizers load with local_files_only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from andromeda.errors import AndromedaError, ConfigError, missing_extra
from andromeda.measure.facts import ModelFacts, facts_from_config
from andromeda.model import Andromeda, ByteTokenizer, from_name
from andromeda.sources.spec import (  # noqa: F401 - the parsing half lives there, torch-free
    COMPILE_KEY,
    COMPILE_MODES,
    KINDS,
    andromeda_config,
    check_source,
    check_syntax,
    compile_mode,
    hf_config,
    llama_config_for,
    matched_llama,
    parse_source,
    resolve_config,
    split_matched,
    xt_unsupported,
)

validate_source = check_source  # the name tests and older code use


@dataclass
class ModelBundle:
    """A built model with what scenarios need to drive it uniformly."""

    source: str
    model: nn.Module
    tokenizer: Any
    facts: ModelFacts
    logits: Callable[[torch.Tensor], torch.Tensor]  # tokens (B, N) -> logits (B, N, V)
    generate: Callable[..., torch.Tensor] | None = None  # (prompt, n_new, use_cache) -> tokens
    info: dict[str, Any] = field(default_factory=dict)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        from andromeda.model import lm_loss

        return lm_loss(self.logits(tokens), tokens)


def build(source: str, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    kind, name, overrides = parse_source(source)
    builder = {"andromeda": _build_andromeda, "hf": _build_hf, "xt": _build_xt}[kind]
    bundle = builder(source, name, overrides)
    bundle.model.to(device=device, dtype=dtype).eval()
    mode = compile_mode(source)
    if mode is not None:  # the same model, its forward compiled: a baseline for eager vs compiled
        bundle.logits = torch.compile(bundle.logits, mode=mode)
        bundle.info["compile"] = mode
    bundle.info["kind"] = kind
    bundle.info.setdefault("dtype", str(dtype).removeprefix("torch."))
    bundle.info.setdefault("device", str(device))
    return bundle


# ---- andromeda ----------------------------------------------------------------------------
def _build_andromeda(source: str, name: str, overrides: dict) -> ModelBundle:
    cfg = resolve_config(name, overrides)
    model = Andromeda(cfg)
    if Path(name).is_dir():  # a checkpoint: its weights (the overrides must leave every weight's shape as saved)
        from andromeda.model.checkpoint import load_weights

        load_weights(model, name)

    def generate(prompt, n_new, use_cache=True):
        return model.generate(prompt, n_new, use_cache=use_cache)

    return ModelBundle(source, model, ByteTokenizer(), facts_from_config(cfg), logits=model,
                       generate=generate, info={"attn_backend": cfg.attn_backend})


# ---- Hugging Face ------------------------------------------------------------------------
def _build_hf(source: str, name: str, overrides: dict) -> ModelBundle:
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise missing_extra("transformers", "hf") from e
    tokenizer = ByteTokenizer()
    path = Path(name)
    match = None
    if path.exists():
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **overrides)
        if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
            from andromeda.model import HFTokenizer

            tokenizer = HFTokenizer(path)
    else:
        if name.startswith("matched:"):  # the FFN width that does the preset's work (source_spec.matched_ffn)
            shape, hf_keys = split_matched(overrides)
            kw, match = matched_llama(source, from_name(name.split(":", 1)[1], **shape), hf_keys)
            model_type = "llama"
        else:
            model_type, kw = name, overrides
        try:
            config = hf_config(AutoConfig, model_type, kw)
        except ValueError as e:
            raise ConfigError(
                f"models: '{source}': '{name}' is neither a local directory nor a transformers model type "
                f"(e.g. llama, gpt2, mistral); {str(e).splitlines()[0]}"
            ) from e
        config._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(config)
    c = model.config
    facts = _hf_facts(c, model)

    def logits(tokens):
        return model(input_ids=tokens, use_cache=False).logits

    def generate(prompt, n_new, use_cache=True):
        return model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                              use_cache=use_cache, pad_token_id=0)

    info = {"transformers": transformers.__version__, "model_type": c.model_type}
    if match is not None:  # how close the Llama's work is to the Andromeda model's
        info["matched"] = match.to_dict()
    return ModelBundle(source, model, tokenizer, facts, logits=logits, generate=generate, info=info)


def _hf_facts(c, model: nn.Module) -> ModelFacts:
    def get(*names, default=None):
        for n in names:
            v = getattr(c, n, None)
            if v is not None:
                return v
        return default

    dim = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    layers = get("num_hidden_layers", "n_layer")
    emb = model.get_input_embeddings()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ModelFacts(
        params=params,
        non_embedding_params=params - (emb.weight.numel() if emb is not None else 0),
        vocab=get("vocab_size"), dim=dim, layers=layers, heads=heads,
        kv_heads=get("num_key_value_heads", default=heads), head_dim=get("head_dim", default=dim // heads),
        ff_hidden=get("intermediate_size", "n_inner", default=4 * dim),
        ff_glu=c.model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"),
        causal=True, max_seq_len=get("max_position_embeddings", "n_positions", default=2048),
        tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
    )


def source_facts(source: str) -> ModelFacts:
    """Facts of a model source without its weights: analytic for andromeda:; for xt: and hf: the
    module tree built on the meta device (no memory, no weights read), so an x-transformers model
    or a 'matched' Llama shows its real parameter count. AndromedaError when the shape cannot be found.
    """
    try:
        kind, name, overrides = parse_source(source)
        if kind == "andromeda":
            return facts_from_config(andromeda_config(source))
        if kind == "xt":
            with torch.device("meta"):
                return _build_xt(source, name, overrides).facts
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError as e:
            raise missing_extra("transformers", "hf") from e
        if Path(name).exists():
            config = AutoConfig.from_pretrained(name, local_files_only=True)
        elif name.startswith("matched:"):  # as build() makes it: Andromeda fields shape it
            shape, hf_keys = split_matched(overrides)
            kw, _ = matched_llama(source, from_name(name.split(":", 1)[1], **shape), hf_keys)
            config = hf_config(AutoConfig, "llama", kw)
        else:
            config = AutoConfig.for_model(name, **overrides)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return _hf_facts(config, model)
    except AndromedaError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the shape is unknown
        raise AndromedaError(f"cannot tell the shape of '{source}': {type(e).__name__}: {e}") from None


# ---- x-transformers -------------------------------------------------------------------------
def _build_xt(source: str, name: str, overrides: dict) -> ModelBundle:
    try:
        import x_transformers
        from x_transformers import Decoder, TransformerWrapper
    except ImportError as e:
        raise missing_extra("x-transformers", "xt") from e
    cfg = resolve_config(name, overrides)
    if (reason := xt_unsupported(cfg)) is not None:
        raise ConfigError(f"models: '{source}': {reason}")
    model = TransformerWrapper(
        num_tokens=cfg.num_tokens, max_seq_len=cfg.max_seq_len, use_abs_pos_emb=cfg.use_abs_pos_emb,
        tie_embedding=cfg.tie_embeddings,
        attn_layers=Decoder(
            dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, attn_dim_head=cfg.dim_head,
            attn_kv_heads=cfg.n_kv_heads, alibi_pos_bias=cfg.alibi_pos_bias,
            alibi_num_heads=cfg.n_alibi_heads or None, rotary_pos_emb=cfg.rotary_pos_emb,
            rotary_xpos=cfg.rotary_xpos, rotary_xpos_scale_base=cfg.xpos_scale_base,
            attn_flash=True, shift_tokens=cfg.shift_tokens, attn_qk_norm=cfg.qk_norm,
            attn_qk_norm_dim_scale=cfg.qk_norm_dim_scale, attn_qk_norm_scale=cfg.qk_norm_scale,
            ff_mult=cfg.ff_mult, use_rmsnorm=cfg.norm == "rmsnorm",
        ),
    )
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    facts = facts_from_config(cfg)
    facts = type(facts)(**{**facts.__dict__, "params": params})
    return ModelBundle(source, model, ByteTokenizer(), facts, logits=model,
                       info={"x_transformers": getattr(x_transformers, "__version__", "unknown")})


def describe() -> dict[str, str]:
    return {
        "andromeda:<preset>[?field=value&...]": "Andromeda preset with config overrides",
        "hf:<local dir>": "Hugging Face causal LM from a local checkpoint (extra [hf])",
        "hf:<model_type>[?key=value&...]": "HF causal LM with random weights from a config (extra [hf])",
        "hf:matched:<preset>": ("Llama doing an Andromeda preset's work (params, FLOPs/token within 2%), "
                                "random weights (extra [hf])"),
        "xt:<preset>[?field=value&...]": "x-transformers model with the preset's flags (extra [xt])",
    }

