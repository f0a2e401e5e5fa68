"""The diagnostics API, usable inside a training loop.

    diag = Diagnostics(model)                     # Andromeda, or a Hugging Face causal LM
    for step, batch in enumerate(loader):
        with diag.capture():                      # hooks on for this forward + backward
            loss = model.loss(batch)              # (HF: model(input_ids=batch, labels=batch).loss)
            loss.backward()
        diag.before_step(); opt.step(); diag.after_step()   # optional: update/weight ratios
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            rep = diag.report()                   # a DiagnosticsReport (plain data)
            print(rep.flagged_layers(), rep.heads_attending())
            diag.reset()

Statistics accumulate over every pass inside `capture()` until `reset()`. Nothing is kept but
running moments and per-head sums, so memory does not grow with the number of steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from andromeda.diagnostics.attention import DEFAULT_CHUNK_ELEMS
from andromeda.diagnostics.capture import AttentionCapture
from andromeda.diagnostics.gradients import GradientTracker, GradThresholds
from andromeda.diagnostics.hooks import SITES, ActivationRecorder
from andromeda.diagnostics.params import ParamCounts, component_map, count_parameters
from andromeda.diagnostics.sites import ModelMap, find_sites


@dataclass(frozen=True)
class DiagnosticsOptions:
    activations: bool = True  # activation statistics at every site
    activation_grads: bool = True  # gradient statistics at the same sites
    param_grads: bool = True  # per-parameter gradient statistics and layer flags
    attention: bool = True  # attention-probability statistics (recomputed from q, k)
    attention_grads: bool = True  # dL/dq, dL/dk, dL/dv, dL/dscores (recomputed with autograd)
    sites: tuple[str, ...] = SITES
    attn_layers: tuple[int, ...] | None = None  # None: every layer
    attn_heads: tuple[int, ...] | None = None  # None: every head
    heatmap_len: int = 32  # the attention heatmap shows the first L queries x L keys of the first input
    heatmap_layers: tuple[int, ...] | None = None  # None: every attention layer captured
    attn_chunk: int | None = None  # query rows per chunk; None: from attn_chunk_elems
    attn_chunk_elems: int = DEFAULT_CHUNK_ELEMS  # probabilities (B * H * rows * keys) per chunk
    entropy_threshold: float = 0.5  # a head with mean normalized entropy below this is concentrated
    max_weight_threshold: float = 0.5  # ... or with mean max weight above this
    saturation: float | None = None  # |x| >= this is saturated; None: half the dtype's max
    zero_tol: float = 0.0  # |x| <= this is a zero
    thresholds: GradThresholds = field(default_factory=GradThresholds)

    def replace(self, **kw: Any) -> DiagnosticsOptions:
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ValueError(f"diagnostics options: unknown {sorted(unknown)}; allowed: {sorted(known)}")
        return DiagnosticsOptions(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **kw})


@dataclass
class DiagnosticsReport:
    params: ParamCounts
    activations: dict[tuple[int | str, str], dict]  # (layer, site) -> stats
    activation_grads: dict[tuple[int | str, str], dict]
    param_grads: dict[str, dict]  # parameter name -> stats (+ update_ratio)
    grads_by_layer: dict[int | str, dict]
    grads_by_component: dict[tuple[int | str, str], dict]
    layer_flags: dict[int | str, dict]
    attention: dict[int, dict]  # layer -> {"stats": per-head lists, "grads": {q, k, v, scores}}
    attention_unavailable: dict[str, str]  # "all" or layer -> reason
    options: DiagnosticsOptions

    def flagged_layers(self) -> dict[int | str, str]:
        out = {}
        for layer, f in self.layer_flags.items():
            if f["exploding"]:
                out[layer] = "exploding"
            elif f["vanishing"]:
                out[layer] = "vanishing"
        return out

    def heads_attending(self) -> dict[int, int]:
        return {layer: a["stats"]["heads_attending"] for layer, a in self.attention.items() if "stats" in a}


class Diagnostics:
    def __init__(self, model: nn.Module, options: DiagnosticsOptions | None = None, **kw: Any):
        self.model = model
        self.options = (options or DiagnosticsOptions()).replace(**kw) if kw else (options or DiagnosticsOptions())
        self.sites: ModelMap = find_sites(model)
        self._owner = component_map(model, self.sites)
        self.reset()

    def reset(self) -> None:
        o = self.options
        self.recorder = ActivationRecorder(self.sites, activations=o.activations, gradients=o.activation_grads,
                                           saturation=o.saturation, zero_tol=o.zero_tol, sites_wanted=o.sites)
        self.tracker = GradientTracker(self.model, self._owner, o.thresholds)
        self.attn = AttentionCapture(
            self.model, self.sites, layers=None if o.attn_layers is None else list(o.attn_layers),
            heads=None if o.attn_heads is None else list(o.attn_heads), stats=o.attention,
            grads=o.attention_grads, heatmap_len=o.heatmap_len,
            heatmap_layers=None if o.heatmap_layers is None else list(o.heatmap_layers),
            chunk=o.attn_chunk, max_elems=o.attn_chunk_elems,
        )

    def parameter_counts(self) -> ParamCounts:
        return count_parameters(self.model, self.sites)

    @contextlib.contextmanager
    def capture(self) -> Iterator[Diagnostics]:
        """Hooks on for the block (forward and backward passes); on exit, the parameters' .grad is read."""
        o = self.options
        with contextlib.ExitStack() as stack:
            if o.activations or o.activation_grads:
                stack.enter_context(self.recorder)
            if o.attention or o.attention_grads:
                stack.enter_context(self.attn)
            yield self
        self.attn.check_seen()
        if o.param_grads and any(p.grad is not None for p in self.model.parameters()):
            self.tracker.observe()

    def before_step(self) -> None:
        """Snapshot the weights (one copy) so after_step() can compute update/weight ratios."""
        self.tracker.before_step()

    def after_step(self) -> None:
        self.tracker.after_step()

    def report(self) -> DiagnosticsReport:
        act, act_g = self.recorder.results()
        o = self.options
        return DiagnosticsReport(
            params=self.parameter_counts(),
            activations=act,
            activation_grads=act_g,
            param_grads=self.tracker.param_summary(),
            grads_by_layer=self.tracker.grouped("layer"),
            grads_by_component=self.tracker.grouped("component"),
            layer_flags=self.tracker.layer_flags(),
            attention=self.attn.results(o.entropy_threshold, o.max_weight_threshold),
            attention_unavailable=dict(self.attn.unavailable),
            options=o,
        )


__all__ = ["Diagnostics", "DiagnosticsOptions", "DiagnosticsReport"]
