"""ModelFacts: what the FLOP and KV-cache formulas need to know about a model, and how to get
them analytically from an Andromeda ModelConfig (no model is built).
"""

from __future__ import annotations

from dataclasses import dataclass

from andromeda.model.config import ModelConfig


@dataclass(frozen=True)
class ModelFacts:
    params: int  # all parameters, shared (tied) ones counted once
    non_embedding_params: int  # params minus the input embeddings (token + absolute position)
    vocab: int
    dim: int  # model width
    layers: int
    heads: int  # query heads
    kv_heads: int  # key/value heads (1 = MQA, < heads = GQA)
    head_dim: int
    ff_hidden: int  # feed-forward inner width
    ff_glu: bool  # gated FFN: three dim x ff_hidden matrices instead of two
    causal: bool
    max_seq_len: int
    tied_embeddings: bool
    lm_head: bool = True  # the model ends in a dim -> vocab projection
    abs_pos_emb: bool = False  # a learned absolute-position table (outside non_embedding_params, like the token one)


def _norm_params(kind: str, dim: int) -> int:
    return 2 * dim if kind == "layernorm" else dim  # LayerNorm: weight + bias; RMSNorm: weight


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def block_params(cfg: ModelConfig) -> int:
    """Parameters of one transformer block of an Andromeda model with this config."""
    d, h, hkv, hd, f = cfg.dim, cfg.heads, cfg.n_kv_heads, cfg.dim_head, cfg.ff_hidden
    attn = (
        _linear(d, h * hd, cfg.attn_bias)  # to_q
        + 2 * _linear(d, hkv * hd, cfg.attn_bias)  # to_k, to_v
        + _linear(h * hd, d, cfg.attn_bias)  # to_out
    )
    if cfg.qk_norm and cfg.qk_norm_dim_scale:
        attn += h * hd + hkv * hd  # per-head, per-dimension gains on q and k
    ff = _linear(d, f, cfg.ff_bias) * (2 if cfg.ff_glu else 1) + _linear(f, d, cfg.ff_bias)
    norms = (1 if cfg.parallel_block else 2) * _norm_params(cfg.norm, d)
    return attn + ff + norms  # token shift has no parameters


def facts_from_config(cfg: ModelConfig) -> ModelFacts:
    embed = cfg.num_tokens * cfg.dim + (cfg.max_seq_len * cfg.dim if cfg.use_abs_pos_emb else 0)
    final_norm = 0 if cfg.deepnorm else _norm_params(cfg.norm, cfg.dim)  # DeepNorm blocks end normalized
    head = 0 if cfg.tie_embeddings else cfg.dim * cfg.num_tokens
    params = embed + cfg.depth * block_params(cfg) + final_norm + head
    return ModelFacts(
        params=params,
        non_embedding_params=params - embed,
        vocab=cfg.num_tokens,
        dim=cfg.dim,
        layers=cfg.depth,
        heads=cfg.heads,
        kv_heads=cfg.n_kv_heads,
        head_dim=cfg.dim_head,
        ff_hidden=cfg.ff_hidden,
        ff_glu=cfg.ff_glu,
        causal=cfg.causal,
        max_seq_len=cfg.max_seq_len,
        tied_embeddings=cfg.tie_embeddings,
        lm_head=True,
        abs_pos_emb=cfg.use_abs_pos_emb,
    )


def kv_cache_bytes_per_token(facts: ModelFacts, bytes_per_elem: float) -> float:
    """Bytes the KV cache holds per token of one sequence: K and V for every layer and KV head.

    bytes_per_elem: 2 for fp16/bf16, 1 for int8, 0.5 for int4 (quantization scales not included).
    """
    return 2 * facts.layers * facts.kv_heads * facts.head_dim * bytes_per_elem


def quantized_kv_bytes_per_token(facts: ModelFacts, bits: int, group_size: int, scale_bytes: int = 4) -> float:
    """Bytes per token of a KV cache of `bits`-bit codes with one scale (float32) per `group_size` features."""
    group = min(group_size, facts.head_dim)
    return kv_cache_bytes_per_token(facts, bits / 8 + scale_bytes / group)


def decode_step_bytes(facts: ModelFacts, context_len: float, weight_bytes: float, kv_bytes: float, *,
                      batch: int = 1) -> float:
    """Bytes one decode step must read from memory: its bandwidth floor is this over the bandwidth.

    - every weight it multiplies: all non-embedding parameters (blocks, final norm, an untied LM head),
      and for tied embeddings the LM head's read of the whole vocab x dim embedding matrix;
    - one input-embedding row per sequence (and one position row with a learned absolute-position
      table), not the whole table;
    - the KV cache: context_len tokens of K and V per sequence (kv_cache_bytes_per_token), where
      context_len is the number of keys the step's query attends to. A float is allowed: the mean over
      a run of steps.

    weight_bytes / kv_bytes: bytes per weight / cache element (2 for bf16). Activations, the logits
    and the new K/V written are not counted: the floor is the reads the step cannot avoid.
    """
    if context_len < 0 or batch < 1:
        raise ValueError(f"context_len must be >= 0 and batch >= 1, got {context_len}, {batch}")
    weights = facts.non_embedding_params
    if facts.tied_embeddings and facts.lm_head:
        weights += facts.vocab * facts.dim
    rows = batch * facts.dim * (2 if facts.abs_pos_emb else 1)
    return (weights + rows) * weight_bytes + batch * context_len * kv_cache_bytes_per_token(facts, kv_bytes)


__all__ = ["ModelFacts", "facts_from_config", "block_params", "kv_cache_bytes_per_token",
           "quantized_kv_bytes_per_token", "decode_step_bytes"]
