"""generation: prefill, time to first token, time per output token, decode and end-to-end rates.

One sample = one whole generation (prefill + gen_len greedy steps), after `timing.warmup` warm-up
generations (at least one). With `runs: null` (the default) generations are timed as latency times a
call: at least `timing.min_runs`, then until the medians of prefill and end-to-end time are both
stable (their 95% bootstrap CI narrower than `timing.target_rel_ci` of the median) or `timing.budget_s`
has been spent measuring, at most `timing.max_runs` (`info.stopped` says which); `runs: N` times
exactly N. Every step of every run is a sample of the time per output token. Each
step is timed on its own (perf_counter between device synchronizations), so the per-position
decode latency curve is measured, not derived. With use_cache false every step recomputes the
prefix: what the cache saves. With cuda_graph (Andromeda, CUDA, full cache) each step replays one
captured CUDA graph of the static decode step; the capture happens before the prefill and is not timed.
decode_kernels picks that step's kernels: "torch", "triton" (our fused batch-1 kernels) or "auto"
(triton where it can run); the record's info names the kernels used and why. On CUDA, prefill_peak_mib is
the most memory allocated during the last run's prefill (weights and cache included).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from andromeda.measure.memory import track_memory
from andromeda.measure.stats import summarize
from andromeda.measure.timing import Stopwatch, stop_reason
from andromeda.measure.timing_config import TimingConfig
from andromeda.scenarios import register
from andromeda.scenarios.common import random_tokens
from andromeda.scenarios.config.generation import GenerationConfig
from andromeda.scenarios.decoding import Decoder


def repeat_generations(generate_once, timing: TimingConfig, runs: int | None) -> tuple[list, str]:
    """Warm-up generations, then measured ones: exactly `runs`, or per `timing` (see the module docstring).
    Returns (the measured runs, why measuring stopped: "runs", "stable", "budget" or "max_runs")."""
    for _ in range(max(1, timing.warmup)):  # allocator, kernels, compilation (UnsupportedError: a skip)
        generate_once()
    if runs is not None:
        return [generate_once() for _ in range(runs)], "runs"
    out: list = []
    t0 = time.perf_counter()
    while True:  # latency's stopping rule, on prefill and end-to-end time together
        out.append(generate_once())
        stopped = stop_reason([[r[k] for r in out] for k in (0, 5)], timing, time.perf_counter() - t0)
        if stopped is not None:
            return out, stopped


@register("generation")
class Generation:
    Config = GenerationConfig

    def run(self, bundle, p, ctx):
        P, G, B = p["prompt_len"], p["gen_len"], p["batch"]
        if P + G > bundle.facts.max_seq_len:
            return ctx.skip(f"prompt_len + gen_len = {P + G} exceeds max_seq_len {bundle.facts.max_seq_len}")
        if p["cuda_graph"] and ctx.device.type != "cuda":
            return ctx.skip(f"cuda_graph needs a CUDA device; this run is on {ctx.device.type}")
        prompt = random_tokens(bundle, B, P, ctx.device, ctx.seed)
        cuda, peak = ctx.device.type == "cuda", [None]

        def generate_once():
            dec = Decoder(bundle, B, P + G, p["use_cache"], cache=p["cache"], group_size=p["cache_group_size"],
                          window=p["cache_window"], cuda_graph=p["cuda_graph"], kernels=p["decode_kernels"])
            with track_memory(ctx.device) if cuda else contextlib.nullcontext() as mem, Stopwatch(ctx.device) as sw:
                logits = dec.prefill(prompt)
            prefill = sw.elapsed_ms
            peak[0] = mem.peak_allocated_mib if cuda else None
            with Stopwatch(ctx.device) as sw:
                nxt = logits.argmax(-1, keepdim=True)
            first = prefill + sw.elapsed_ms
            steps = []
            for _ in range(G - 1):
                with Stopwatch(ctx.device) as sw:
                    nxt = dec.step(nxt).argmax(-1, keepdim=True)
                steps.append(sw.elapsed_ms)
            return prefill, first, steps, dec.cache_bytes(), dec.kernels, first + sum(steps)

        runs, stopped = repeat_generations(generate_once, ctx.timing, p["runs"])
        prefill = [r[0] for r in runs]
        ttft = [r[1] for r in runs]
        total = [r[1] + sum(r[2]) for r in runs]
        step_matrix = np.array([r[2] for r in runs]) if G > 1 else np.zeros((len(runs), 0))
        per_position = np.median(step_matrix, axis=0).tolist() if G > 1 else []
        tpot = summarize(step_matrix.flatten().tolist()) if G > 1 else None
        metrics = {
            **summarize(prefill).to_metrics("prefill_ms"),
            **summarize(ttft).to_metrics("ttft_ms"),
            "e2e_ms": float(np.median(total)),
            "e2e_tokens_per_s": B * G / (float(np.median(total)) / 1e3),
            "kv_cache_mib": runs[-1][3] / 2**20,
        }
        if peak[0] is not None:
            metrics["prefill_peak_mib"] = peak[0]
        if tpot is not None:
            metrics.update(tpot.to_metrics("tpot_ms"))
            metrics["decode_tokens_per_s"] = B / (tpot.median / 1e3)
        samples = {"decode_step_ms": per_position, "prefill_ms": prefill, "ttft_ms": ttft, "e2e_ms": total}
        if G > 1:
            samples["tpot_ms"] = step_matrix.flatten().tolist()  # every step of every run: what comparisons test
        info = {"runs": len(runs), "stopped": stopped}
        if runs[-1][4] is not None:
            info["decode_kernels"], info["decode_kernels_reason"] = runs[-1][4]
        return [ctx.record(metrics, samples=samples, info=info)]
