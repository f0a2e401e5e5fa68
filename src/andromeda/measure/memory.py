"""Peak memory of a block of code: CUDA allocator peaks, torch's CPU tensor peak, and the process's
peak resident set size; and out-of-memory errors told apart from others (is_oom), memory freed after one.

    with track_memory("cuda") as mem:
        model(tokens)
    mem.peak_allocated_mib, mem.delta_peak_allocated_mib, mem.rss_peak_mib, ...

    with track_cpu_tensors() as t:       # CPU: what the block's tensors needed at their worst
        model(tokens)
    t.peak_mib, t.end_mib                # above what was allocated at the start; None with t.reason

Process RSS is not a model's memory: it holds the interpreter, torch's libraries and heap pages freed
earlier and reused (a block that reuses them adds nothing to RSS). track_cpu_tensors() counts torch's
own CPU allocations and frees instead, in order, from the profiler's memory events: the CPU
counterpart of the CUDA allocator's delta peak (memory a library allocates outside torch's allocator,
e.g. a BLAS workspace, is not in it).

CUDA: reset_peak_memory_stats on entry, max_memory_allocated/reserved on exit (after a
synchronize). Host RSS (every device): on Linux the kernel's peak RSS (VmHWM) is reset by
writing "5" to /proc/self/clear_refs and read at exit; where that is not permitted (or the
block is nested inside another tracker, whose reset it would spoil) a background thread samples
VmRSS every ~1 ms instead, which can miss peaks shorter than that. All sizes in MiB (2**20 bytes).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

MIB = 2**20
RssMethod = Literal["auto", "clear_refs", "sampling"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_SAMPLE_PERIOD_S = 0.001
_depth = 0  # trackers currently open that reset the kernel's peak RSS (clear_refs)
_depth_lock = threading.Lock()


@dataclass
class MemoryStats:
    device: str
    # CUDA allocator (None on other devices), MiB
    start_allocated_mib: float | None = None
    start_reserved_mib: float | None = None
    peak_allocated_mib: float | None = None  # absolute peak during the block
    peak_reserved_mib: float | None = None
    delta_peak_allocated_mib: float | None = None  # peak - start: what the block added at its worst
    delta_peak_reserved_mib: float | None = None
    end_allocated_mib: float | None = None
    # host process resident set size, MiB
    rss_start_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_delta_mib: float | None = None  # rss_peak - rss_start
    rss_method: str | None = None  # "clear_refs" (kernel peak, exact) | "sampling" (~1 ms) | None (no /proc)

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """The numeric fields, named {prefix}{field}; unknown (None) fields are left out."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = float(v)
        return out


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements: numel * element_size."""
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, counting shared (tied) tensors once.

    Tensors are deduplicated by identity, and real (non-meta) tensors also by (device, data
    pointer, dtype, shape), so two Parameter objects viewing the same memory count once.
    """
    seen_ids: set[int] = set()
    seen_mem: set[tuple] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen_ids:
            continue
        seen_ids.add(id(t))
        if t.device.type != "meta" and t.numel() > 0:
            key = (str(t.device), t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
            if key in seen_mem:
                continue
            seen_mem.add(key)
        total += tensor_bytes(t)
    return total


# ---- host RSS ---------------------------------------------------------------------------------
def _status_mib(field: str) -> float | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in MiB, or None where there is no /proc."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; True if the kernel accepted it and the reset took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_mib("VmHWM"), _status_mib("VmRSS")
    # a kernel that ignores "5" leaves the old, higher peak in place
    return hwm is not None and rss is not None and hwm <= rss + 16.0


class _RssSampler:
    """Background thread recording the highest VmRSS seen, every ~1 ms."""

    def __init__(self) -> None:
        self.peak = _status_mib("VmRSS") or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="andromeda-rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(_SAMPLE_PERIOD_S):
            v = _status_mib("VmRSS")
            if v is not None and v > self.peak:
                self.peak = v

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        last = _status_mib("VmRSS")
        return max(self.peak, last or 0.0)


@contextlib.contextmanager
def track_memory(
    device: torch.device | str = "cpu", *, rss_method: RssMethod = "auto"
) -> Iterator[MemoryStats]:
    """Measure peak memory of the block; the yielded MemoryStats is filled in on exit.

    rss_method: "auto" (clear_refs where permitted, else sampling), or force one of them
    ("clear_refs" raises RuntimeError where the kernel does not permit it).
    """
    global _depth
    dev = torch.device(device)
    stats = MemoryStats(device=str(dev))
    is_cuda = dev.type == "cuda"

    # host RSS: choose the method
    stats.rss_start_mib = _status_mib("VmRSS")
    sampler: _RssSampler | None = None
    use_clear = False
    if stats.rss_start_mib is not None:
        with _depth_lock:
            nested = _depth > 0
            if rss_method in ("auto", "clear_refs") and not nested:
                use_clear = _reset_peak_rss()
            if use_clear:
                _depth += 1
        if rss_method == "clear_refs" and not use_clear:
            raise RuntimeError(
                "rss_method='clear_refs': resetting the peak RSS via /proc/self/clear_refs is not permitted "
                "here" + (" (nested inside another tracker)" if nested else "") + "; use 'auto' or 'sampling'"
            )
        if not use_clear:
            sampler = _RssSampler()
            sampler.start()
        stats.rss_method = "clear_refs" if use_clear else "sampling"
        stats.rss_start_mib = _status_mib("VmRSS")

    if is_cuda:
        torch.cuda.synchronize(dev)
        stats.start_allocated_mib = torch.cuda.memory_allocated(dev) / MIB
        stats.start_reserved_mib = torch.cuda.memory_reserved(dev) / MIB
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        yield stats
    finally:
        if is_cuda:
            torch.cuda.synchronize(dev)
            stats.peak_allocated_mib = torch.cuda.max_memory_allocated(dev) / MIB
            stats.peak_reserved_mib = torch.cuda.max_memory_reserved(dev) / MIB
            stats.end_allocated_mib = torch.cuda.memory_allocated(dev) / MIB
            stats.delta_peak_allocated_mib = stats.peak_allocated_mib - stats.start_allocated_mib
            stats.delta_peak_reserved_mib = stats.peak_reserved_mib - stats.start_reserved_mib
        if use_clear:
            stats.rss_peak_mib = _status_mib("VmHWM")
            with _depth_lock:
                _depth -= 1
        elif sampler is not None:
            stats.rss_peak_mib = sampler.stop()
        if stats.rss_peak_mib is not None and stats.rss_start_mib is not None:
            stats.rss_delta_mib = stats.rss_peak_mib - stats.rss_start_mib


# ---- torch's CPU tensors -----------------------------------------------------------------------
@dataclass
class TensorPeak:
    peak_mib: float | None = None  # highest CPU tensor memory allocated in the block, above its start
    end_mib: float | None = None  # still allocated at its end (above the start)
    reason: str | None = None  # why the fields are None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """fd 2 to /dev/null for the block (kineto prints a line when the profiler starts and stops)."""
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def track_cpu_tensors() -> Iterator[TensorPeak]:
    """Peak bytes of torch CPU tensors allocated in the block above what was allocated at its start: the
    running sum of the profiler's allocation (+) and free (-) events, in the order they happened."""
    from torch.profiler import ProfilerActivity, kineto_available, profile

    stats = TensorPeak()
    if not kineto_available():
        stats.reason = "this torch build has no profiler (kineto) to count CPU tensor allocations"
        yield stats
        return
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    try:
        with _quiet_stderr():
            prof.start()
    except RuntimeError as e:  # another profiler is running
        stats.reason = f"the profiler could not start: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        yield stats
        return
    try:
        yield stats
    finally:
        with _quiet_stderr():
            prof.stop()
        cpu = torch.autograd.DeviceType.CPU
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == cpu]
        running = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):  # stable: same-time events keep their order
            running += e.nbytes()
            peak = max(peak, running)
        stats.peak_mib, stats.end_mib = peak / MIB, running / MIB


__all__ = ["MemoryStats", "track_memory", "module_bytes", "tensor_bytes", "MIB", "TensorPeak", "track_cpu_tensors"]


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error: torch's, Python's MemoryError, or an allocator's RuntimeError saying so."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")
    )


def free_memory(device: torch.device) -> None:
    """Give freed memory back: collect garbage, and on CUDA release the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
