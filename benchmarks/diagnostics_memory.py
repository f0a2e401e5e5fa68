"""Peak memory of a diagnostics pass against a plain forward + backward on the same input.

Each measurement runs in a fresh process (so the allocator's cache and the process's peak RSS of
one do not flatter the other): build the model, then measure one forward + backward, plain or
inside `Diagnostics.capture()` with everything on (activation and activation-gradient statistics,
parameter-gradient statistics, attention statistics and heatmap for every layer and head, and the
gradients through the attention). CUDA: peak allocated minus allocated before the pass. CPU: peak
RSS minus RSS before the pass (measure.memory.track_memory), with glibc's mmap threshold fixed
(MMAP_THRESHOLD) so that RSS follows the live tensors.

    python benchmarks/diagnostics_memory.py                        # small preset, 4096 tokens, best device
    python benchmarks/diagnostics_memory.py --seq 512 --set depth=2 --device cpu --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("plain", "diagnostics")
# glibc serves allocations above this size with mmap and returns them on free, so the process's RSS
# follows its live tensors; by default the threshold grows and freed blocks stay resident, and the
# RSS peak would measure the allocator's history instead of the pass.
MMAP_THRESHOLD = 65536


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def measure(mode: str, preset: str, overrides: dict, seq: int, batch: int, device: str) -> dict:
    """One measurement in this process (call it in a fresh one)."""
    import torch

    from andromeda.devices import resolve_device
    from andromeda.diagnostics import Diagnostics
    from andromeda.measure.memory import track_memory
    from andromeda.model import Andromeda, from_name
    from andromeda.model.backends import tuning_record

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = Andromeda(from_name(preset, **overrides)).to(dev)
    tokens = torch.randint(0, 256, (batch, seq), device=dev)
    diag = Diagnostics(model) if mode == "diagnostics" else None
    with track_memory(dev) as mem:
        if diag is None:
            model.loss(tokens).backward()
        else:
            with diag.capture():
                model.loss(tokens).backward()
            diag.report()
    if dev.type == "cuda":
        peak, how = mem.delta_peak_allocated_mib, "cuda_delta_peak_allocated"
    else:
        peak, how = mem.rss_delta_mib, f"rss_delta ({mem.rss_method})"
    return {"mode": mode, "peak_mib": peak, "how": how, "device": str(dev), "seq": seq, "batch": batch,
            "preset": preset, "overrides": overrides, "params": model.num_params(), "kernel_tuning": tuning_record()}


def compare(preset: str, overrides: dict, seq: int, batch: int, device: str, parallel: bool = False) -> dict:
    """Both measurements, each in a fresh process; `parallel` runs the two at once (fine for RSS, which
    is per process; not for one shared GPU's timings, which this does not measure anyway)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    if parallel:  # two processes share the cores: one thread each, so they do not oversubscribe them
        env["OMP_NUM_THREADS"] = "1"
    procs, results = {}, {}

    def finish(mode: str) -> None:
        out, err = procs[mode].communicate()
        if procs[mode].returncode != 0:
            raise RuntimeError(f"{mode} measurement failed:\n{err}")
        results[mode] = json.loads(out.strip().splitlines()[-1])
        print(f"{mode}: {results[mode]['peak_mib']:.1f} MiB ({results[mode]['how']})", file=sys.stderr)

    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--preset", preset, "--seq", str(seq), "--batch", str(batch),
               "--device", device] + [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        procs[mode] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if not parallel:
            finish(mode)
    for mode in MODES:
        if mode not in results:
            finish(mode)
    plain, diag = results["plain"]["peak_mib"], results["diagnostics"]["peak_mib"]
    return {"plain": results["plain"], "diagnostics": results["diagnostics"],
            "ratio": diag / plain if plain else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="model config override")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--parallel", action="store_true", help="run the two measurements at once (CPU)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    overrides = _overrides(a.set)
    if a.child:
        print(json.dumps(measure(a.child, a.preset, overrides, a.seq, a.batch, a.device)))
        return 0
    res = compare(a.preset, overrides, a.seq, a.batch, a.device, a.parallel)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
