"""Parameter counts per layer and per component, and the component of any parameter.

Components: attn.q, attn.k, attn.v, attn.qkv (fused), attn.out, attn.qk_norm, attn.other, ff.in,
ff.gate, ff.out, ff.other, norm, embedding, head, other. Shared (tied) parameters count once, under
the first module that registers them (named_parameters' deduplication), so the counts sum to the
model's total.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from andromeda.diagnostics.sites import ModelMap, is_norm

NON_LAYER = "model"  # the layer label of parameters outside the decoder layers

_ATTN_NAMES = [
    ("attn.qkv", re.compile(r"qkv|c_attn|query_key_value", re.I)),
    ("attn.q", re.compile(r"^(to_)?q(_proj|_lin)?$|^query$|^wq$", re.I)),
    ("attn.k", re.compile(r"^(to_)?k(_proj|_lin)?$|^key$|^wk$", re.I)),
    ("attn.v", re.compile(r"^(to_)?v(_proj|_lin)?$|^value$|^wv$", re.I)),
    ("attn.out", re.compile(r"^(to_)?o(ut)?(_proj|_lin)?$|^to_out$|^out_proj$|^c_proj$|^dense$|^wo$", re.I)),
]


@dataclass
class ParamInfo:
    name: str
    layer: int | str  # decoder layer index, or NON_LAYER
    component: str
    numel: int
    trainable: bool


@dataclass
class ParamCounts:
    total: int
    trainable: int
    params: list[ParamInfo] = field(default_factory=list)
    by_component: dict[str, int] = field(default_factory=dict)
    by_layer: dict[int | str, int] = field(default_factory=dict)
    by_layer_component: dict[tuple[int | str, str], int] = field(default_factory=dict)
    trainable_by_component: dict[str, int] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)  # modules whose weight is shared with an earlier one

    def share(self, count: int) -> float:
        return count / self.total if self.total else float("nan")

    @property
    def embedding(self) -> int:
        return self.by_component.get("embedding", 0)


def _classify_in_attn(rel: list[str], module: nn.Module, attn_out: nn.Module | None) -> str:
    if is_norm(module) or any(re.search(r"norm", p, re.I) for p in rel):
        return "attn.qk_norm"
    if attn_out is not None and module is attn_out:
        return "attn.out"
    leaf = rel[-1] if rel else ""
    for comp, pat in _ATTN_NAMES:
        if any(pat.search(p) for p in ([leaf] if comp != "attn.qkv" else rel)):
            return comp
    return "attn.other"


def _classify_in_mlp(rel: list[str], module: nn.Module, ff_out: nn.Module | None) -> str:
    if ff_out is not None and module is ff_out:
        return "ff.out"
    if any(re.search(r"gate", p, re.I) for p in rel):
        return "ff.gate"
    if getattr(module, "weight", None) is not None and not is_norm(module):
        return "ff.in"
    return "ff.other"


def component_map(model: nn.Module, sites: ModelMap) -> dict[int, tuple[int | str, str]]:
    """id(parameter) -> (layer, component) for every parameter of the model (shared ones once)."""
    owner: dict[int, tuple[int | str, str]] = {}
    embed_ids = {id(p) for p in sites.embed.parameters()} if sites.embed is not None else set()
    head_ids = {id(p) for p in sites.head.parameters()} if sites.head is not None else set()
    layer_mods = {id(ls.block): ls for ls in sites.layers}
    for mod_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            if id(p) in owner:
                continue
            owner[id(p)] = _locate(model, mod_name, module, p, layer_mods, embed_ids, head_ids)
    return owner


def _locate(model, mod_name, module, p, layer_mods, embed_ids, head_ids) -> tuple[int | str, str]:
    # walk down from the root along mod_name to find the enclosing decoder layer and sub-layer
    path = mod_name.split(".") if mod_name else []
    node = model
    for depth, part in enumerate(path):
        node = getattr(node, part) if not part.isdigit() else node[int(part)]
        ls = layer_mods.get(id(node))
        if ls is None:
            continue
        rest = path[depth + 1 :]
        sub = node
        for j, part2 in enumerate(rest):
            sub = getattr(sub, part2) if not part2.isdigit() else sub[int(part2)]
            if sub is ls.attn:
                return ls.index, _classify_in_attn(rest[j + 1 :], module, ls.attn_out)
            if sub is ls.mlp:
                return ls.index, _classify_in_mlp(rest[j + 1 :], module, ls.ff_out)
        return ls.index, "norm" if is_norm(module) else "other"
    if id(p) in embed_ids or isinstance(module, nn.Embedding):
        return NON_LAYER, "embedding"
    if id(p) in head_ids:
        return NON_LAYER, "head"
    return NON_LAYER, "norm" if is_norm(module) else "other"


def count_parameters(model: nn.Module, sites: ModelMap) -> ParamCounts:
    owner = component_map(model, sites)
    infos: list[ParamInfo] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():  # deduplicated: a tied weight appears once
        if id(p) in seen:
            continue
        seen.add(id(p))
        layer, comp = owner[id(p)]
        infos.append(ParamInfo(name, layer, comp, p.numel(), p.requires_grad))
    by_c: dict[str, int] = defaultdict(int)
    by_l: dict[int | str, int] = defaultdict(int)
    by_lc: dict[tuple[int | str, str], int] = defaultdict(int)
    tr_c: dict[str, int] = defaultdict(int)
    for i in infos:
        by_c[i.component] += i.numel
        by_l[i.layer] += i.numel
        by_lc[(i.layer, i.component)] += i.numel
        if i.trainable:
            tr_c[i.component] += i.numel
    tied = []
    if sites.head is not None and sites.embed is not None:
        emb = {id(p) for p in sites.embed.parameters()}
        if any(id(p) in emb for p in sites.head.parameters()):
            tied.append("head (weight tied to the input embedding; counted under embedding)")
    return ParamCounts(
        total=sum(i.numel for i in infos),
        trainable=sum(i.numel for i in infos if i.trainable),
        params=infos,
        by_component=dict(by_c),
        by_layer=dict(by_l),
        by_layer_component=dict(by_lc),
        trainable_by_component=dict(tr_c),
        tied=tied,
    )


__all__ = ["ParamInfo", "ParamCounts", "count_parameters", "component_map", "NON_LAYER"]
