"""Where to look inside a model: decoder layers, their attention and feed-forward modules, found by
module type (Andromeda) or by structure and class-name patterns (Hugging Face and other models).

Never by the model's name: a generic model's decoder layers are the longest ModuleList whose items
each have an attention-like child and a feed-forward-like child.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

ATTN_PATTERN = re.compile(r"attn|attention", re.IGNORECASE)
MLP_PATTERN = re.compile(r"mlp|feed_?forward|ffn|^ff$", re.IGNORECASE)
NORM_PATTERN = re.compile(r"norm", re.IGNORECASE)


@dataclass
class LayerSites:
    index: int
    block: nn.Module
    attn: nn.Module | None = None
    mlp: nn.Module | None = None
    ff_out: nn.Module | None = None  # the feed-forward's output projection: its input is the hidden
    attn_out: nn.Module | None = None  # the attention's output projection: its input is the heads' output


@dataclass
class ModelMap:
    kind: str  # "andromeda" | "generic"
    layers: list[LayerSites] = field(default_factory=list)
    embed: nn.Module | None = None
    head: nn.Module | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    problem: str | None = None  # why no decoder layers were found, if none were

    def layer_of(self, module: nn.Module) -> int | None:
        for ls in self.layers:
            if module is ls.block:
                return ls.index
        return None


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or bool(
        NORM_PATTERN.search(type(module).__name__)
    )


def _weighted(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, nn.Parameter) and w.dim() == 2 and not isinstance(module, nn.Embedding)


def last_projection(module: nn.Module) -> nn.Module | None:
    """The last registered module with a 2-D weight (Linear, HF Conv1D): a sub-layer's output projection."""
    found = None
    for m in module.modules():
        if m is not module and _weighted(m) and not is_norm(m):
            found = m
    return found


def _match_child(block: nn.Module, pattern: re.Pattern) -> nn.Module | None:
    for name, child in block.named_children():
        if pattern.search(name) or pattern.search(type(child).__name__):
            if pattern is MLP_PATTERN or not is_norm(child):  # "attn_norm" is a norm, not attention
                return child
    return None


def find_sites(model: nn.Module) -> ModelMap:
    from andromeda.model import Andromeda
    from andromeda.model.attention import Attention
    from andromeda.model.layers import Block, FeedForward

    if isinstance(model, Andromeda):
        cfg = model.cfg
        layers = []
        for i, blk in enumerate(model.blocks):
            assert isinstance(blk, Block) and isinstance(blk.attn, Attention) and isinstance(blk.ff, FeedForward)
            layers.append(LayerSites(i, blk, blk.attn, blk.ff, blk.ff.w_out, blk.attn.to_out))
        return ModelMap("andromeda", layers, model.embed, model.head, cfg.heads, cfg.n_kv_heads, cfg.dim_head)
    return _generic(model)


def _generic(model: nn.Module) -> ModelMap:
    best: list[LayerSites] = []
    for mod in model.modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) <= len(best):
            continue
        layers = []
        for i, blk in enumerate(mod):
            attn, mlp = _match_child(blk, ATTN_PATTERN), _match_child(blk, MLP_PATTERN)
            if attn is None or mlp is None:
                break
            layers.append(LayerSites(i, blk, attn, mlp, last_projection(mlp), last_projection(attn)))
        else:
            best = layers
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    dim = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    head_dim = getattr(cfg, "head_dim", None) or (dim // heads if dim and heads else None)
    problem = None if best else (
        "no decoder layers found: no ModuleList whose items each have an attention-like child "
        f"(name or class matching {ATTN_PATTERN.pattern!r}) and a feed-forward-like child ({MLP_PATTERN.pattern!r})"
    )
    return ModelMap("generic", best, embed, head, heads, kv, head_dim, problem)


__all__ = ["LayerSites", "ModelMap", "find_sites", "is_norm", "last_projection"]
