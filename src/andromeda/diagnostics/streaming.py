"""Running moments of a stream of tensors, merged exactly in float64 (Chan / Pebay).

Each update reduces a slice of at most `slice_elems` elements to (n, mean, M2, M3, M4, min, max,
sum of squares, counts) in float64 and merges it into the running state with the pairwise update
formulas of Chan et al. (1979) extended to the third and fourth central moments (Pebay, 2008).
Nothing but those scalars is kept, so a hook can feed it every activation of a long run.

Moments and extremes are over the finite elements; NaN and Inf are counted apart. The state stays
on the tensor's device (0-d float64 tensors) and is read back once, in `summary()`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SLICE_ELEMS = 1 << 20  # elements converted to float64 at once: 8 MiB of float64


def _f64_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


class RunningStats:
    """Streaming mean, std, min, max, RMS, skewness, kurtosis, zero/saturated fractions, NaN/Inf counts.

    zero_tol: an element is a zero when |x| <= zero_tol (0.0: exact zeros, e.g. dead ReLU units).
    saturation: an element is saturated when |x| >= saturation; None: half the largest finite
        value of the incoming tensor's dtype (a factor two from overflow).
    channels: also track, per last-dimension channel, whether it was ever nonzero (dead channels).
    higher: also the third and fourth central moments (skewness, kurtosis).
    """

    def __init__(self, zero_tol: float = 0.0, saturation: float | None = None, channels: bool = False,
                 slice_elems: int = SLICE_ELEMS, higher: bool = True):
        self.zero_tol = float(zero_tol)
        self.saturation = saturation
        self.track_channels = channels
        self.higher = higher  # third and fourth moments (skewness, kurtosis); off: a cheaper pass
        self.slice_elems = int(slice_elems)
        self.n = 0  # finite elements merged (Python int: exact)
        self._s: dict[str, torch.Tensor] | None = None  # mean, m2, m3, m4, min, max, sumsq, zeros, sat
        self.nan = 0
        self.inf = 0
        self._nan_t: torch.Tensor | None = None
        self._inf_t: torch.Tensor | None = None
        self._alive: torch.Tensor | None = None  # (C,) bool: channel ever nonzero
        self.updates = 0

    # ---- feeding ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge every element of x (any shape, any floating dtype)."""
        if x.numel() == 0:
            return
        self.updates += 1
        sat = self.saturation
        if sat is None and x.is_floating_point():
            sat = 0.5 * torch.finfo(x.dtype).max
        x = x.detach()
        if self.track_channels and x.dim() >= 1:
            nonzero = x != 0 if self.zero_tol == 0 else x.abs() > self.zero_tol
            alive = nonzero.reshape(-1, x.shape[-1]).any(dim=0)
            self._alive = alive if self._alive is None or self._alive.shape != alive.shape else self._alive | alive
        flat = x.reshape(-1)
        dev = _f64_device(flat.device)
        for start in range(0, flat.numel(), self.slice_elems):
            self._update_slice(flat[start : start + self.slice_elems].to(dev, torch.float64), sat)

    def _update_slice(self, v: torch.Tensor, sat: float | None) -> None:
        total = v.sum()  # NaN or Inf anywhere makes the sum non-finite; finite float values cannot overflow it
        if not bool(torch.isfinite(total)):
            finite = torch.isfinite(v)
            nan = torch.isnan(v).sum()
            inf = (~finite).sum() - nan
            self._nan_t = nan if self._nan_t is None else self._nan_t + nan
            self._inf_t = inf if self._inf_t is None else self._inf_t + inf
            v = v[finite]
            total = v.sum()
        nb = v.numel()
        if nb == 0:
            return
        lo, hi = torch.aminmax(v)
        mean = total / nb
        d = v - mean
        d2 = d * d
        zero = torch.zeros((), dtype=torch.float64, device=v.device)
        b = {
            "mean": mean,
            "m2": d2.sum(),
            "m3": torch.dot(d2, d) if self.higher else zero,
            "m4": torch.dot(d2, d2) if self.higher else zero,
            "min": lo,
            "max": hi,
            "sumsq": torch.dot(v, v),
            "zeros": ((v == 0) if self.zero_tol == 0 else (v.abs() <= self.zero_tol)).sum().double(),
            # the count pass only runs when the slice reaches the threshold at all
            "sat": (v.abs() >= sat).sum().double() if sat is not None and max(-lo, hi) >= sat else zero,
        }
        self._merge(nb, b)

    def _merge(self, nb: int, b: dict[str, torch.Tensor]) -> None:
        if self._s is None:
            self.n, self._s = nb, b
            return
        a, na = self._s, self.n
        n = na + nb
        delta = b["mean"] - a["mean"]
        d_n = delta / n
        m2 = a["m2"] + b["m2"] + delta * d_n * na * nb
        m3 = (a["m3"] + b["m3"] + delta * d_n * d_n * na * nb * (na - nb)
              + 3.0 * d_n * (na * b["m2"] - nb * a["m2"]))
        m4 = (a["m4"] + b["m4"] + delta * d_n**3 * na * nb * (na * na - na * nb + nb * nb)
              + 6.0 * d_n * d_n * (na * na * b["m2"] + nb * nb * a["m2"])
              + 4.0 * d_n * (na * b["m3"] - nb * a["m3"]))
        self._s = {
            "mean": a["mean"] + d_n * nb,
            "m2": m2,
            "m3": m3,
            "m4": m4,
            "min": torch.minimum(a["min"], b["min"]),
            "max": torch.maximum(a["max"], b["max"]),
            "sumsq": a["sumsq"] + b["sumsq"],
            "zeros": a["zeros"] + b["zeros"],
            "sat": a["sat"] + b["sat"],
        }
        self.n = n

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold another accumulator into this one (e.g. per-parameter stats into a per-layer total)."""
        if other._s is not None:
            dev = self._s["mean"].device if self._s is not None else other._s["mean"].device
            self._merge(other.n, {k: v.to(dev) for k, v in other._s.items()})
        for name in ("_nan_t", "_inf_t"):
            o = getattr(other, name)
            if o is not None:
                mine = getattr(self, name)
                setattr(self, name, o.clone() if mine is None else mine + o.to(mine.device))
        self.updates += other.updates
        return self

    # ---- reading ------------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self._s is None and self._nan_t is None

    def summary(self) -> dict[str, Any]:
        """count, mean, std (population), var, min, max, abs_max, rms, l2_norm, skewness, kurtosis
        (Pearson, 3 for a Gaussian), zero_frac, saturated_frac, nan_count, inf_count[, dead_frac]."""
        nan = int(self._nan_t.item()) if self._nan_t is not None else 0
        inf = int(self._inf_t.item()) if self._inf_t is not None else 0
        out: dict[str, Any] = {"count": self.n, "nan_count": nan, "inf_count": inf}
        if self._s is None:
            return out
        s = {k: float(v.item()) for k, v in self._s.items()}
        n = self.n
        var = max(s["m2"] / n, 0.0)
        out.update(
            mean=s["mean"],
            std=math.sqrt(var),
            var=var,
            min=s["min"],
            max=s["max"],
            abs_max=max(abs(s["min"]), abs(s["max"])),
            rms=math.sqrt(s["sumsq"] / n),
            l2_norm=math.sqrt(s["sumsq"]),
            zero_frac=s["zeros"] / n,
            saturated_frac=s["sat"] / n,
        )
        if self.higher:
            out["skewness"] = (s["m3"] / n) / var**1.5 if var > 0 else float("nan")
            out["kurtosis"] = (s["m4"] / n) / (var * var) if var > 0 else float("nan")
        if self._alive is not None:
            out["dead_frac"] = float((~self._alive).float().mean().item())
        return out


@torch.no_grad()
def sq_norm(x: torch.Tensor, slice_elems: int = SLICE_ELEMS) -> float:
    """sum(x^2) in float64, converting at most slice_elems elements at a time."""
    flat = x.detach().reshape(-1)
    dev = _f64_device(flat.device)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for start in range(0, flat.numel(), slice_elems):
        v = flat[start : start + slice_elems].to(dev, torch.float64)
        total += (v * v).sum()
    return float(total)


def tensor_stats(x: torch.Tensor, **kw: Any) -> dict[str, Any]:
    """RunningStats.summary() of one tensor."""
    rs = RunningStats(**kw)
    rs.update(x)
    return rs.summary()


__all__ = ["RunningStats", "tensor_stats", "sq_norm", "SLICE_ELEMS"]
