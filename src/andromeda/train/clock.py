"""The phases of a training step timed without synchronizing the host: CUDA events recorded on the stream at
each phase boundary (read when the step's record is collected), perf_counter elsewhere (CPU work runs as it
is issued)."""

from __future__ import annotations

import time

import torch


class PhaseClock:
    """mark(name) at each boundary; durations_ms() after the device has finished (it waits for the last mark).

    Each mark closes the interval since the previous one, which is charged to the previous mark's name; the
    same name may recur (micro-batches) and its intervals add up."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append((name, ev))
        else:
            self._marks.append((name, time.perf_counter()))

    def durations_ms(self) -> dict[str, float]:
        """Milliseconds per name, and "total" from the first mark to the last."""
        if len(self._marks) < 2:
            return {"total": 0.0}
        if self.cuda:
            self._marks[-1][1].synchronize()
            gap = [a.elapsed_time(b) for (_, a), (_, b) in zip(self._marks, self._marks[1:], strict=False)]
        else:
            gap = [(b - a) * 1e3 for (_, a), (_, b) in zip(self._marks, self._marks[1:], strict=False)]
        out: dict[str, float] = {}
        for (name, _), ms in zip(self._marks, gap, strict=False):
            out[name] = out.get(name, 0.0) + ms
        out["total"] = sum(gap)
        return out


__all__ = ["PhaseClock"]
