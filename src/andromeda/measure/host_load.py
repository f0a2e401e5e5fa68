"""Host load while a case ran: how many CPUs other processes took, from the kernel's counters.

    probe = LoadProbe(threads=4)
    ... run the case ...
    load = probe.stop()   # {"foreign_cpus": 1.02, "cpus": 2, "threads": 2, "load_avg_1m": 2.3, "seconds": 0.8}
    noisy_reason(load)    # "other processes used 1.02 of 2 CPUs ..." or None

foreign_cpus = (busy CPU time of the CPUs this process may use, from /proc/stat's per-CPU lines, including
the time a hypervisor stole) - (this process's own CPU time and its waited-for children's, os.times()),
over the wall time: other work competing with the measurement. It is the direct evidence of a busy
machine; the load average, a one-minute mean that also counts this process's own threads, is recorded
beside it. Where /proc/stat is missing (not Linux) foreign_cpus is None and nothing is flagged.

Torch-free; never prints.
"""

from __future__ import annotations

import os
import time
from typing import Any

_PROC_STAT = "/proc/stat"
FOREIGN_MIN = 0.5  # CPUs of other work tolerated even when every CPU is ours (counter resolution, daemons)


def _cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def busy_seconds(cpus: set[int] | None, path: str = _PROC_STAT) -> float | None:
    """Busy CPU seconds since boot of the given CPUs (all when None): user + nice + system + irq + softirq +
    steal ticks of /proc/stat's cpuN lines, over the clock tick. None where /proc/stat is not readable."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        with open(path) as f:
            lines = f.readlines()
    except (OSError, ValueError, AttributeError):
        return None
    ticks = 0
    found = False
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
        user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
        ticks += user + nice + system + irq + softirq + steal
        found = True
    return ticks / hz if found else None


def own_seconds() -> float:
    """CPU seconds of this process (every thread) and of its children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """Counters at construction; stop() turns their change into the load the case ran under."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.cpus = _cpus()
        self._wall = time.perf_counter()
        self._busy = busy_seconds(self.cpus)
        self._own = own_seconds()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        busy, own = busy_seconds(self.cpus), own_seconds()
        n = len(self.cpus) if self.cpus else os.cpu_count()
        out: dict[str, Any] = {"seconds": round(wall, 3), "cpus": n, "threads": self.threads, "foreign_cpus": None}
        if busy is not None and self._busy is not None and wall > 0:
            out["foreign_cpus"] = round(max(0.0, (busy - self._busy) - (own - self._own)) / wall, 3)
        try:
            out["load_avg_1m"] = round(os.getloadavg()[0], 2)
        except (AttributeError, OSError):
            out["load_avg_1m"] = None
        return out


def noisy_reason(load: dict[str, Any]) -> str | None:
    """Why a case's timings are not trustworthy, or None: other processes took more CPU than the run left
    idle (the usable CPUs minus its threads, at least FOREIGN_MIN), so they competed with it."""
    foreign, cpus, threads = load.get("foreign_cpus"), load.get("cpus"), load.get("threads")
    if foreign is None or not cpus:
        return None
    spare = max(FOREIGN_MIN, cpus - (threads or cpus))
    if foreign <= spare:
        return None
    return (f"other processes used {foreign:.2f} of {cpus} CPU(s) while it ran with {threads or '?'} thread(s) "
            f"(at most {spare:g} spare)")


__all__ = ["LoadProbe", "noisy_reason", "busy_seconds", "own_seconds", "FOREIGN_MIN"]
