"""Capture what each attention call computes on (q, k, v after QK-norm and rotary, scale, mask)
without changing the model's kernel, then reduce it to statistics (attention.py).

- Andromeda: a forward pre-hook on each `Attention` module calls `Attention.project_qk` on the
  attention input (the same projections, QK-norm and rotary/xPos the module applies) and takes
  the ALiBi slopes from the call's arguments. The gradient of the heads' output (the input of
  `to_out`) is read by a tensor hook registered in a pre-hook on `to_out`.
- Hugging Face: models whose attention modules call transformers' `AttentionInterface` get, for
  the duration of the capture, an attention implementation that records (q, k, v, mask, scaling)
  and then calls the model's own implementation (sdpa, eager, flash, ...), so the numbers and
  the kernel are unchanged. The gradient of its output is read by a tensor hook.
- Anything else: attention metrics are unavailable, with the reason.

With gradients on, each requested layer keeps its (q, k, v) until the backward pass reaches it
(linear in N, like the tensors autograd itself saves) and then recomputes the attention in query
chunks with autograd to get dL/dq, dL/dk, dL/dv and dL/dscores.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from andromeda.diagnostics.attention import (
    DEFAULT_CHUNK_ELEMS,
    AttentionGrads,
    AttentionInputs,
    HeadStats,
    attention_grads,
    attention_stats,
)
from andromeda.diagnostics.sites import ModelMap
from andromeda.errors import UnsupportedError

_HF_PREFIX = "andromeda_diagnostics__"


class AttentionCapture:
    def __init__(self, model: nn.Module, sites: ModelMap, *, layers: list[int] | None = None,
                 heads: list[int] | None = None, stats: bool = True, grads: bool = True, heatmap_len: int = 0,
                 heatmap_layers: list[int] | None = None, chunk: int | None = None,
                 max_elems: int = DEFAULT_CHUNK_ELEMS):
        self.model = model
        self.map = sites
        all_layers = [ls.index for ls in sites.layers]
        missing = [i for i in layers or [] if i not in all_layers]
        if missing and all_layers:
            raise ValueError(f"attention layers {missing}: the model has layers 0..{len(all_layers) - 1}")
        self.layers = all_layers if layers is None else [i for i in layers if i in all_layers]
        self.heads = heads
        self.want_stats = stats
        self.want_grads = grads
        self.heatmap_len = heatmap_len
        self.heatmap_layers = set(self.layers if heatmap_layers is None else heatmap_layers)
        self.chunk = chunk
        self.max_elems = max_elems
        self.stats: dict[int, HeadStats] = {}
        self.grads: dict[int, AttentionGrads] = {}
        self.seen: set[int] = set()
        self.unavailable: dict[str, str] = {}  # "all" or str(layer) -> reason
        self._pending: dict[int, list[AttentionInputs]] = {}
        self._handles: list[Any] = []
        self._hf_restore: str | None = None
        self._hf_name = ""
        self.mode = sites.kind if sites.kind == "andromeda" else "hf"

    # ---- shared --------------------------------------------------------------------------------
    def _forward(self, layer: int, inp: AttentionInputs) -> None:
        self.seen.add(layer)
        if self.want_stats:
            acc = self.stats.get(layer)
            if acc is None:
                hm = self.heatmap_len if layer in self.heatmap_layers else 0
                acc = self.stats[layer] = HeadStats(
                    list(range(inp.q.shape[1])) if self.heads is None else list(self.heads), heatmap_len=hm
                )
            elif acc.heatmap is not None:
                acc.heatmap_len = 0  # the heatmap shows the first captured input only
            attention_stats(inp, self.heads, chunk=self.chunk, max_elems=self.max_elems, acc=acc)
        if self.want_grads and torch.is_grad_enabled() and inp.v is not None:
            self._pending.setdefault(layer, []).append(inp)

    def _backward(self, layer: int, d_out: torch.Tensor) -> None:
        queue = self._pending.get(layer)
        if not queue:
            return
        inp = queue.pop()  # backward visits the calls of one layer in reverse order
        acc = self.grads.setdefault(layer, AttentionGrads())
        attention_grads(inp, d_out, chunk=self.chunk, max_elems=self.max_elems // 4, acc=acc)

    def _valid_heads(self, h: int) -> None:
        if self.heads is not None and any(not 0 <= x < h for x in self.heads):
            raise ValueError(f"attention heads {self.heads}: the model has heads 0..{h - 1}")

    # ---- install / remove -------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        if not self.map.layers:
            self.unavailable["all"] = self.map.problem or "no decoder layers found"
            return self
        if self.mode == "andromeda":
            self._install_andromeda()
        else:
            self._install_hf()
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()
        if self._hf_restore is not None:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface

            self.model.config._attn_implementation = self._hf_restore
            self._hf_restore = None
            for registry in (AttentionInterface, AttentionMaskInterface):
                registry._global_mapping.pop(self._hf_name, None)

    def check_seen(self) -> None:
        """After a forward: name the requested layers whose attention could not be captured."""
        if "all" in self.unavailable:
            return
        for i in self.layers:
            if i not in self.seen and str(i) not in self.unavailable:
                cls = type(self.map.layers[i].attn).__name__
                self.unavailable[str(i)] = (
                    f"attention module {cls} of layer {i} did not expose q and k: it is not Andromeda's "
                    "Attention and did not call transformers' AttentionInterface during the forward"
                )

    # ---- Andromeda -----------------------------------------------------------------------------
    def _install_andromeda(self) -> None:
        for layer in self.layers:
            ls = self.map.layers[layer]
            attn = ls.attn
            self._handles.append(attn.register_forward_pre_hook(self._andromeda_pre(layer, attn), with_kwargs=True))
            if self.want_grads:
                self._handles.append(ls.attn_out.register_forward_pre_hook(self._andromeda_out(layer, attn)))

    def _andromeda_pre(self, layer: int, attn: nn.Module):
        names = ("x", "rope", "alibi_slopes", "cache", "layer")

        def hook(module, args, kwargs):
            a = dict(zip(names, args, strict=False)) | kwargs
            if a.get("cache") is not None:
                return None  # cached decoding: one query, not what the diagnostics look at
            self._valid_heads(attn.cfg.heads)
            rope = a.get("rope")
            if rope is not None and rope[2] is not None and len(rope[2].blocks()) > 1:
                raise UnsupportedError(f"diagnostics: attention statistics take positions within one xPos anchor "
                                       f"block ({rope[2].period} positions); use a shorter input")
            with torch.no_grad():
                q, k, v = attn.project_qk(a["x"], a.get("rope"))  # (B, H, N, D), (B, H_kv, N, D)
            inp = AttentionInputs(q, k, v, attn.cfg.attn_scale, attn.cfg.causal, a.get("alibi_slopes"))
            self._forward(layer, inp)
            return None

        return hook

    def _andromeda_out(self, layer: int, attn: nn.Module):
        def hook(module, args):
            x = args[0]  # (B, N, H * D): the heads' output
            if x.requires_grad and torch.is_grad_enabled():
                b, n, _ = x.shape
                d = attn.cfg.dim_head
                x.register_hook(lambda g: self._backward(layer, g.view(b, n, -1, d).transpose(1, 2)))

        return hook

    # ---- Hugging Face ----------------------------------------------------------------------------
    def _install_hf(self) -> None:
        cfg = getattr(self.model, "config", None)
        impl = getattr(cfg, "_attn_implementation", None) if cfg is not None else None
        try:
            from transformers import AttentionInterface
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        except ImportError:
            self.unavailable["all"] = (
                "q and k are not exposed: the attention modules are not Andromeda's and transformers "
                "(whose AttentionInterface would expose them) is not installed"
            )
            return
        if impl is None:
            self.unavailable["all"] = (
                "q and k are not exposed: the attention modules are not Andromeda's Attention and the model "
                "has no transformers config._attn_implementation, so its attention cannot be routed through "
                "a capturing AttentionInterface implementation"
            )
            return
        name = f"{_HF_PREFIX}{id(self)}__{impl}"  # unique: two captures never share a wrapper
        by_module = {id(self.map.layers[i].attn): i for i in self.layers}
        capture = self

        def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
            home = sys.modules[type(module).__module__]  # the model file may override an implementation locally
            orig = (getattr(home, "eager_attention_forward", None) if impl == "eager"
                    else getattr(home, "ALL_ATTENTION_FUNCTIONS", ALL_ATTENTION_FUNCTIONS)[impl])
            if orig is None:
                raise RuntimeError(f"diagnostics: cannot find the eager attention of {type(module).__name__}")
            out = orig(module, query, key, value, attention_mask, *args, **kwargs)
            layer = by_module.get(id(module))
            if layer is not None and query.shape[2] > 1:
                capture._hf_call(layer, module, query, key, value, attention_mask, kwargs, out)
            return out

        AttentionInterface.register(name, wrapper)
        if impl in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[impl])
        self._hf_restore = impl
        self._hf_name = name
        cfg._attn_implementation = name

    def _hf_call(self, layer, module, query, key, value, mask, kwargs, out) -> None:
        for unsupported in ("softcap", "s_aux", "sinks"):
            if kwargs.get(unsupported) is not None:
                self.unavailable[str(layer)] = f"attention uses '{unsupported}', which the recomputation does not model"
                self.seen.add(layer)
                return
        if mask is None and kwargs.get("sliding_window") is not None:
            self.unavailable[str(layer)] = "sliding-window attention without an explicit mask is not modelled"
            self.seen.add(layer)
            return
        self._valid_heads(query.shape[1])
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        scale = kwargs.get("scaling")
        if scale is None:
            scale = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
        m = mask if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None
        if mask is not None and m is None:
            self.unavailable[str(layer)] = f"attention mask of type {type(mask).__name__} is not modelled"
            self.seen.add(layer)
            return
        inp = AttentionInputs(query.detach(), key.detach(), value.detach(), float(scale),
                              bool(is_causal) and m is None, None, m, kwargs.get("position_bias"))
        self._forward(layer, inp)
        o = out[0] if isinstance(out, (tuple, list)) else out
        if self.want_grads and isinstance(o, torch.Tensor) and o.requires_grad and torch.is_grad_enabled():
            h, n = query.shape[1], query.shape[2]
            heads_last = o.shape[1] == n and o.shape[2] == h  # (B, N, H, D) as sdpa/eager return it
            o.register_hook(lambda g: self._backward(layer, g.transpose(1, 2) if heads_last else g))

    # ---- results -------------------------------------------------------------------------------
    def results(self, entropy_threshold: float, max_weight_threshold: float) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for layer in sorted(set(self.stats) | set(self.grads)):
            entry: dict[str, Any] = {}
            if layer in self.stats:
                entry["stats"] = self.stats[layer].summary(entropy_threshold, max_weight_threshold)
            if layer in self.grads:
                entry["grads"] = self.grads[layer].summary()
            out[layer] = entry
        return out


__all__ = ["AttentionCapture"]
