"""Training health metrics, cheap enough to stay on: gradient norms (global and per layer) every step, each
block's output statistics at an interval, and a spike detector that names the layer behind a spike.

- GradNorms: the per-tensor norms the clipping needs anyway (one fused torch._foreach_norm), summed per layer
  group on the device: the transformer blocks one group each, every other module (embedding, final norm, head)
  its own. No extra pass over the gradients, no host synchronization.
- ActivationStats: forward hooks on the blocks, registered only for a step at the interval (and only its first
  micro-batch), each putting the output's mean, standard deviation and max |x| (float32) on the device.
- SpikeDetector: on the host, when the step's values are read (log time): a rise from the previous value beyond
  the mean + k * std of the step-to-step changes in the last `window` values is a spike; the record names the
  layer whose gradient norm is furthest above its own moving mean (ratio to it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from andromeda.train.regional import model_blocks


def layer_groups(model: nn.Module, params: Sequence[nn.Parameter]) -> tuple[list[str], list[int]]:
    """(group names, group index of each of `params`): `blocks.3` for a block's parameters, the module path
    (`embed.token`, `final_norm`, `head`) for the others."""
    found = model_blocks(model)
    prefix = found[0] + "." if found else None
    names_of = {}
    for name, p in model.named_parameters():  # a tied parameter: its first name
        names_of.setdefault(id(p), name)
    groups: list[str] = []
    index: list[int] = []
    for p in params:
        name = names_of.get(id(p), "?")
        if prefix and name.startswith(prefix):
            group = prefix + name[len(prefix):].split(".", 1)[0]
        else:
            group = name.rsplit(".", 1)[0] if "." in name else name
        if group not in groups:
            groups.append(group)
        index.append(groups.index(group))
    return groups, index


class GradNorms:
    """Global and per-group L2 norms of `params`' gradients, from one foreach norm (device tensors)."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], per_layer: bool,
                 named_like: Sequence[nn.Parameter] | None = None):
        """named_like: the model's parameters `params` mirror (the float32 masters of bf16-master), for naming."""
        self.params = list(params)
        self.groups, index = layer_groups(model, named_like if named_like is not None else self.params)
        self.per_layer = per_layer
        self._index = torch.tensor(index, dtype=torch.long)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(global norm, per-group norms (G,) or None); parameters without a gradient count as zero.

        Sharded gradients (FSDP2's DTensors) contribute their local shards' squares, summed over the mesh's
        ranks in one all-reduce (a replicated one's square is divided by the ranks first)."""
        have = [(i, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        if not have:
            zero = torch.zeros((), dtype=torch.float32)
            return zero, (torch.zeros(len(self.groups)) if self.per_layer else None)
        grads = [g for _, g in have]
        sharded = [g for g in grads if hasattr(g, "to_local")]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        sq = torch.stack(torch._foreach_norm(local, 2, dtype=torch.float32)).square()  # (P,)
        if sharded:
            mesh = sharded[0].device_mesh
            ranks = mesh.size()
            share = [1.0 / ranks if hasattr(g, "placements") and all(pl.is_replicate() for pl in g.placements)
                     or not hasattr(g, "to_local") else 1.0 for g in grads]
            sq = sq * torch.tensor(share, device=sq.device)
        if self._index.device != sq.device:
            self._index = self._index.to(sq.device)
        idx = self._index[[i for i, _ in have]] if len(have) != len(self.params) else self._index
        per = torch.zeros(len(self.groups), dtype=torch.float32, device=sq.device).index_add_(0, idx, sq)
        if sharded:
            import torch.distributed as dist

            dist.all_reduce(per, group=mesh.get_group())
        total = per.sum().sqrt()
        return total, (per.sqrt() if self.per_layer else None)


class ActivationStats:
    """Mean, standard deviation and max |x| of each block's output, on the device, for one forward."""

    STATS = ("mean", "std", "max_abs")

    def __init__(self, model: nn.Module):
        found = model_blocks(model)
        self.blocks = list(found[1]) if found else []
        self.names = [f"{found[0]}.{i}" for i in range(len(self.blocks))] if found else []
        self._handles: list = []
        self._out: list[torch.Tensor | None] = []

    def start(self) -> None:
        """Hook the blocks for the next forward (each block's first call only)."""
        self.stop()
        self._out = [None] * len(self.blocks)
        for i, blk in enumerate(self.blocks):
            self._handles.append(blk.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(module, args, output):
            if self._out[i] is not None:
                return
            x = output[0] if isinstance(output, (tuple, list)) else output
            with torch.no_grad():
                xf = x.detach().float()
                std, mean = torch.std_mean(xf, correction=0)
                self._out[i] = torch.stack([mean, std, xf.abs().amax()])  # (3,)
        return hook

    def stop(self) -> torch.Tensor | None:
        """Remove the hooks; the (blocks, 3) statistics of the forward that ran, or None if none did."""
        for h in self._handles:
            h.remove()
        self._handles = []
        out, self._out = self._out, []
        if not out or any(o is None for o in out):
            return None
        return torch.stack(out)


@dataclass(frozen=True)
class Spike:
    step: int
    metric: str  # "loss" or "grad_norm"
    value: float
    expected: float  # the previous value plus the window's mean step-to-step change
    std: float  # the standard deviation of the window's step-to-step changes
    sigmas: float  # (value - expected) / std; inf for a non-finite value
    layer: str | None  # the group whose gradient norm is furthest above its moving mean, if per-layer norms exist
    layer_ratio: float | None  # its norm over its moving mean

    def to_dict(self) -> dict:
        return asdict(self)

    def message(self) -> str:
        where = f"; layer {self.layer} at {self.layer_ratio:.1f}x its moving mean" if self.layer else ""
        return (f"spike at step {self.step}: {self.metric} {self.value:.4g} is {self.sigmas:.1f} sigma above the "
                f"{self.expected:.4g} the previous steps lead to (std of a step's change {self.std:.3g}){where}")


class SpikeDetector:
    """Flags a loss or gradient norm that rose from the previous value by more than its usual step-to-step change:
    with d the changes within the last `window` values, a spike is value - previous > mean(d) + sigma * std(d).

    Changes, not levels: a loss falling (or a norm growing) along a trend does not widen the band, so a jump is
    seen against the noise alone. min_history values are needed before anything is flagged; std has a floor of
    rel_floor * |previous| so that a nearly constant series does not flag its rounding. Only rises count; a
    non-finite value is always a spike. Every finite value enters the window (a lasting shift stops alarming)."""

    def __init__(self, window: int = 50, sigma: float = 6.0, min_history: int = 10, rel_floor: float = 1e-3):
        self.window, self.sigma, self.min_history, self.rel_floor = window, sigma, min_history, rel_floor
        self._series = {"loss": deque(maxlen=window), "grad_norm": deque(maxlen=window)}
        self._layers: dict[str, deque] = {}
        self.spikes: list[Spike] = []

    def _check(self, metric: str, value: float) -> tuple[float, float, float] | None:
        hist = self._series[metric]
        prev = hist[-1] if hist else float("nan")
        if not math.isfinite(value):
            return prev, float("nan"), math.inf
        if len(hist) < self.min_history:
            return None
        h = list(hist)
        d = [b - a for a, b in zip(h, h[1:], strict=False)]
        mean = sum(d) / len(d)
        std = max(math.sqrt(sum((x - mean) ** 2 for x in d) / len(d)), self.rel_floor * abs(prev), 1e-12)
        expected = prev + mean
        z = (value - expected) / std
        return (expected, std, z) if z > self.sigma else None

    def update(self, step: int, loss: float, grad_norm: float,
               layers: dict[str, float] | None = None) -> list[Spike]:
        """Check this step's values against the window, then add them (unless they spiked); the new spikes."""
        found = []
        for metric, value in (("loss", loss), ("grad_norm", grad_norm)):
            hit = self._check(metric, value)
            if hit is not None:
                layer, ratio = self._moved_most(layers)
                found.append(Spike(step, metric, value, hit[0], hit[1], hit[2], layer, ratio))
        for metric, value in (("loss", loss), ("grad_norm", grad_norm)):
            if math.isfinite(value):
                self._series[metric].append(value)
        for name, v in (layers or {}).items():
            if math.isfinite(v):
                self._layers.setdefault(name, deque(maxlen=self.window)).append(v)
        self.spikes.extend(found)
        return found

    def _moved_most(self, layers: dict[str, float] | None) -> tuple[str | None, float | None]:
        best, ratio = None, None
        for name, v in (layers or {}).items():
            hist = self._layers.get(name)
            if not hist:
                continue
            m = sum(hist) / len(hist)
            r = math.inf if not math.isfinite(v) else (v / m if m > 0 else math.inf if v > 0 else 1.0)
            if ratio is None or r > ratio:
                best, ratio = name, r
        return best, ratio


__all__ = ["GradNorms", "ActivationStats", "SpikeDetector", "Spike", "layer_groups"]
