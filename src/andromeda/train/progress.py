"""The line `andromeda train` prints per logged step: step/total, loss, tokens/s, utilization and ETA."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt_duration(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(span: Sequence[dict[str, Any]], steps: int) -> str:
    """The steps since the last line (`span`, each a Trainer history entry), as one line:
    `step 40/200 (20%)  loss 3.4121  12,345 tokens/s  MFU 1.2%  ETA 0:32`.

    loss: the mean over the span; tokens/s: its tokens over its time; MFU (or TFLOP/s where the device's peak is
    unknown): the span's median; ETA: the steps left at the span's mean step time (validation not counted)."""
    last = span[-1]
    step = int(last["step"])
    seconds = sum(h["step_ms"] for h in span) / 1e3
    tokens = sum(h["tokens_per_s"] * h["step_ms"] / 1e3 for h in span)
    parts = [f"step {step}/{steps} ({100 * step // steps}%)",
             f"loss {sum(h['loss'] for h in span) / len(span):.4f}",
             f"{tokens / seconds:,.0f} tokens/s" if seconds > 0 else "? tokens/s"]
    if all("mfu" in h for h in span):
        parts.append(f"MFU {100 * _median([h['mfu'] for h in span]):.1f}%")
    elif all("tflops" in h for h in span):
        parts.append(f"{_median([h['tflops'] for h in span]):.3g} TFLOP/s")  # no MFU: the device's peak is unknown
    parts.append(f"ETA {fmt_duration((steps - step) * seconds / len(span))}")
    return "  ".join(parts)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


__all__ = ["progress_line", "fmt_duration"]
