"""Activation and activation-gradient statistics, streamed from forward hooks and tensor hooks.

Sites, per decoder layer (found by sites.find_sites):
  block      the layer's output                          forward hook on the layer
  attn       the attention sub-layer's output            forward hook on the attention module
  ff_in      the feed-forward's input                    forward pre-hook on the feed-forward module
  ff_hidden  the feed-forward's hidden units, after the  forward pre-hook on its output projection
             nonlinearity (and the gate, for GLU)
  ff_out     the feed-forward's output                   forward hook on the feed-forward module
and `embed` (layer "model"): the input embedding's output.

The gradient of the loss with respect to each of these tensors is streamed by a hook registered on
the tensor during the forward pass. No activation is kept: each is reduced to running moments
(streaming.RunningStats) as it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from andromeda.diagnostics.params import NON_LAYER
from andromeda.diagnostics.sites import ModelMap
from andromeda.diagnostics.streaming import RunningStats

SITES = ("embed", "block", "attn", "ff_in", "ff_hidden", "ff_out")
Key = tuple[int | str, str]  # (layer, site)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


class ActivationRecorder:
    """Installs the hooks on enter, removes them on exit; stats accumulate across passes."""

    def __init__(self, sites: ModelMap, *, activations: bool = True, gradients: bool = True,
                 saturation: float | None = None, zero_tol: float = 0.0, sites_wanted: tuple[str, ...] = SITES):
        self.map = sites
        self.activations = activations
        self.gradients = gradients
        self.kw = {"saturation": saturation, "zero_tol": zero_tol}
        self.sites_wanted = sites_wanted
        self.act: dict[Key, RunningStats] = {}
        self.grad: dict[Key, RunningStats] = {}
        self._handles: list[Any] = []

    def _stats(self, table: dict[Key, RunningStats], key: Key) -> RunningStats:
        if key not in table:
            table[key] = RunningStats(channels=True, **self.kw)
        return table[key]

    def _observe(self, key: Key, t: torch.Tensor | None) -> None:
        if t is None or not t.is_floating_point():
            return
        if self.activations:
            self._stats(self.act, key).update(t)
        if self.gradients and t.requires_grad and torch.is_grad_enabled():
            stats = self._stats(self.grad, key)
            t.register_hook(lambda g: stats.update(g))

    def _out_hook(self, key: Key) -> Callable:
        def hook(module, args, output):
            self._observe(key, _first_tensor(output))

        return hook

    def _in_hook(self, key: Key) -> Callable:
        def hook(module, args):
            self._observe(key, _first_tensor(args))

        return hook

    def __enter__(self) -> ActivationRecorder:
        want = set(self.sites_wanted)
        h = self._handles
        if self.map.embed is not None and "embed" in want:
            h.append(self.map.embed.register_forward_hook(self._out_hook((NON_LAYER, "embed"))))
        for ls in self.map.layers:
            i = ls.index
            if "block" in want:
                h.append(ls.block.register_forward_hook(self._out_hook((i, "block"))))
            if ls.attn is not None and "attn" in want:
                h.append(ls.attn.register_forward_hook(self._out_hook((i, "attn"))))
            if ls.mlp is not None:
                if "ff_in" in want:
                    h.append(ls.mlp.register_forward_pre_hook(self._in_hook((i, "ff_in"))))
                if "ff_out" in want:
                    h.append(ls.mlp.register_forward_hook(self._out_hook((i, "ff_out"))))
            if ls.ff_out is not None and "ff_hidden" in want:
                h.append(ls.ff_out.register_forward_pre_hook(self._in_hook((i, "ff_hidden"))))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def results(self) -> tuple[dict[Key, dict], dict[Key, dict]]:
        """({(layer, site): activation summary}, {(layer, site): gradient summary})."""
        return ({k: v.summary() for k, v in self.act.items()}, {k: v.summary() for k, v in self.grad.items()})


__all__ = ["ActivationRecorder", "SITES"]
