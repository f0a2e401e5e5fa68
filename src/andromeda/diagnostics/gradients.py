"""Parameter-gradient statistics, update/weight ratios, and vanishing/exploding flags per layer.

Per parameter (read from .grad after backward): norm = ||g||_2 (over several observed steps: the
root mean square of the per-step norms), mean, std, abs_max (over all observed elements), and after an
optimizer step the update/weight ratio ||w_after - w_before||_2 / ||w_before||_2. Per layer and
per (layer, component) the same, over the union of their parameters' elements.

A layer is flagged on a step when the gradient norm G_l of its trainable weight matrices (all its
trainable parameters if it has no matrix) is
  vanishing:  G_l < vanishing_abs  or  G_l / median_l(G_l) < vanishing_rel
  exploding:  G_l not finite  or  G_l > exploding_abs  or  G_l / median_l(G_l) > exploding_rel
Across steps a layer is reported vanishing/exploding when it was flagged on every observed step
("stays" near zero), and the counts of flagged steps are kept.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from andromeda.diagnostics.params import NON_LAYER
from andromeda.diagnostics.streaming import RunningStats, sq_norm


@dataclass(frozen=True)
class GradThresholds:
    vanishing_abs: float = 1e-7
    vanishing_rel: float = 1e-3
    exploding_abs: float = 1e2
    exploding_rel: float = 1e3


@dataclass
class GradientTracker:
    """Call `observe()` after each backward; `before_step()` / `after_step()` around optimizer.step()."""

    model: nn.Module
    owner: dict[int, tuple[int | str, str]]  # id(param) -> (layer, component), from params.component_map
    thresholds: GradThresholds = field(default_factory=GradThresholds)
    per_param: dict[str, RunningStats] = field(default_factory=dict)
    steps: int = 0
    vanishing_steps: dict[int | str, int] = field(default_factory=lambda: defaultdict(int))
    exploding_steps: dict[int | str, int] = field(default_factory=lambda: defaultdict(int))
    last_layer_norms: dict[int | str, float] = field(default_factory=dict)
    update_sq: dict[str, float] = field(default_factory=dict)  # per param: ||dw||^2 of the last step
    weight_sq: dict[str, float] = field(default_factory=dict)  # per param: ||w_before||^2
    _snapshot: dict[str, torch.Tensor] = field(default_factory=dict)

    def _named(self):
        seen = set()
        for name, p in self.model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    @torch.no_grad()
    def observe(self) -> dict[int | str, float]:
        """Fold the current .grad of every trainable parameter in; flag this step. Returns layer -> G_l.

        G_l is the norm over the layer's weight matrices (parameters with 2 or more dimensions), or over
        all its parameters when it has none: a layer whose matrices get no gradient is not learning,
        even if an output bias still does.
        """
        mat_sq: dict[int | str, float] = defaultdict(float)
        all_sq: dict[int | str, float] = defaultdict(float)
        has_mat: set[int | str] = set()
        for name, p in self._named():
            if not p.requires_grad:
                continue
            layer, _ = self.owner[id(p)]
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)  # no gradient reached it: zero
            rs = self.per_param.setdefault(name, RunningStats(higher=False))
            rs.update(g)
            sq = sq_norm(g)
            all_sq[layer] += sq
            if p.dim() >= 2:
                mat_sq[layer] += sq
                has_mat.add(layer)
        norms = {layer: math.sqrt(mat_sq[layer] if layer in has_mat else all_sq[layer]) for layer in all_sq}
        self.steps += 1
        self.last_layer_norms = norms
        for layer, flag in self.flags(norms).items():
            if flag == "vanishing":
                self.vanishing_steps[layer] += 1
            elif flag == "exploding":
                self.exploding_steps[layer] += 1
        return norms

    def flags(self, norms: dict[int | str, float]) -> dict[int | str, str | None]:
        t = self.thresholds
        decoder = [v for k, v in norms.items() if k != NON_LAYER and math.isfinite(v)]
        med = statistics.median(decoder) if decoder else float("nan")
        out: dict[int | str, str | None] = {}
        for layer, g in norms.items():
            rel = g / med if med and math.isfinite(med) and med > 0 else float("nan")
            if not math.isfinite(g) or g > t.exploding_abs or (math.isfinite(rel) and rel > t.exploding_rel):
                out[layer] = "exploding"
            elif g < t.vanishing_abs or (math.isfinite(rel) and rel < t.vanishing_rel):
                out[layer] = "vanishing"
            else:
                out[layer] = None
        return out

    # ---- update / weight ratio ------------------------------------------------------------------
    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot the trainable parameters (one copy of the weights) before optimizer.step()."""
        self._snapshot = {n: p.detach().clone() for n, p in self._named() if p.requires_grad}

    @torch.no_grad()
    def after_step(self, keep_snapshot: bool = False) -> None:
        """Update/weight ratios of the step since before_step(); the snapshot is dropped unless kept
        (for restore())."""
        params = dict(self._named())
        for name, old in self._snapshot.items():
            new = params[name].detach()
            self.update_sq[name] = sq_norm(new.float() - old.float())
            self.weight_sq[name] = sq_norm(old)
        if not keep_snapshot:
            self._snapshot = {}

    def restore(self) -> None:
        """Put the weights of the last snapshot back (a diagnostic step that must leave the model unchanged)."""
        params = dict(self._named())
        with torch.no_grad():
            for name, old in self._snapshot.items():
                params[name].copy_(old)
        self._snapshot = {}

    # ---- reading -----------------------------------------------------------------------------------
    def param_summary(self) -> dict[str, dict]:
        out = {}
        for name, rs in self.per_param.items():
            s = self._with_norm(rs.summary())
            if name in self.update_sq:
                s["update_ratio"] = _ratio(self.update_sq[name], self.weight_sq[name])
            out[name] = s
        return out

    def grouped(self, by: str) -> dict:
        """Merged gradient stats and update ratios per layer ("layer") or per (layer, component) ("component")."""
        names = {n: self.owner[id(p)] for n, p in self._named() if n in self.per_param}
        groups: dict = {}
        for name, (layer, comp) in names.items():
            key = layer if by == "layer" else (layer, comp)
            g = groups.setdefault(key, {"stats": RunningStats(higher=False), "u": 0.0, "w": 0.0, "has_update": False})
            g["stats"].merge(self.per_param[name])
            if name in self.update_sq:
                g["u"] += self.update_sq[name]
                g["w"] += self.weight_sq[name]
                g["has_update"] = True
        out = {}
        for key, g in groups.items():
            s = self._with_norm(g["stats"].summary())
            if g["has_update"]:
                s["update_ratio"] = _ratio(g["u"], g["w"])
            out[key] = s
        return out

    def _with_norm(self, s: dict) -> dict:
        """norm: root mean square over the observed steps of the per-step L2 norm."""
        if "l2_norm" in s and self.steps:
            s["norm"] = s["l2_norm"] / math.sqrt(self.steps)
        return s

    def layer_flags(self) -> dict[int | str, dict]:
        """Per layer: the last step's norm and flag, and how many observed steps flagged it."""
        last = self.flags(self.last_layer_norms)
        out = {}
        for layer, g in self.last_layer_norms.items():
            v, e = self.vanishing_steps.get(layer, 0), self.exploding_steps.get(layer, 0)
            out[layer] = {
                "grad_norm": g,  # G_l: over the weight matrices
                "flag_last_step": last.get(layer),
                "vanishing_steps": v,
                "exploding_steps": e,
                "steps": self.steps,
                "vanishing": self.steps > 0 and v == self.steps,
                "exploding": self.steps > 0 and e == self.steps,
            }
        return out


def _ratio(u: float, w: float) -> float:
    return math.sqrt(u) / math.sqrt(w) if w > 0 else (0.0 if u == 0 else float("inf"))


__all__ = ["GradientTracker", "GradThresholds"]
