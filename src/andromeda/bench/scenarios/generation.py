"""generation: prefill, time to first token, time per output token, decode and end-to-end rates.

One sample = one whole generation (prefill + gen_len greedy steps), repeated `runs` times after
one warm-up generation; every step of every run is a sample of the time per output token. Each
step is timed on its own (perf_counter between device synchronizations), so the per-position
decode latency curve is measured, not derived. With use_cache false every step recomputes the
prefix: what the cache saves. With cuda_graph (Andromeda, CUDA, full cache) each step replays one
captured CUDA graph of the static decode step; the capture happens before the prefill and is not timed.
decode_kernels picks that step's kernels: "torch", "triton" (our fused batch-1 kernels) or "auto"
(triton where it can run); the record's info names the kernels used and why.
"""

from __future__ import annotations

import numpy as np

from andromeda.bench.decoding import Decoder
from andromeda.bench.scenarios import register
from andromeda.bench.scenarios.common import random_tokens
from andromeda.bench.scenarios.config.generation import GenerationConfig
from andromeda.bench.stats import summarize
from andromeda.bench.timing import Stopwatch


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

        def generate_once():
            dec = Decoder(bundle, B, P + G, p["use_cache"], cache=p["cache"], group_size=p["cache_group_size"],
                          window=p["cache_window"], cuda_graph=p["cuda_graph"], kernels=p["decode_kernels"])
            with Stopwatch(ctx.device) as sw:
                logits = dec.prefill(prompt)
            prefill = sw.elapsed_ms
            with Stopwatch(ctx.device) as sw:
                nxt = logits.argmax(-1, keepdim=True)
            first = prefill + sw.elapsed_ms
            steps = []
            for _ in range(G - 1):
                with Stopwatch(ctx.device) as sw:
                    nxt = dec.step(nxt).argmax(-1, keepdim=True)
                steps.append(sw.elapsed_ms)
            return prefill, first, steps, dec.cache_bytes(), dec.kernels

        generate_once()  # warm-up: allocator, kernels, compilation (UnsupportedError: a skipped record)
        runs = [generate_once() for _ in range(p["runs"])]
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
        if tpot is not None:
            metrics.update(tpot.to_metrics("tpot_ms"))
            metrics["decode_tokens_per_s"] = B / (tpot.median / 1e3)
        samples = {"decode_step_ms": per_position, "prefill_ms": prefill, "ttft_ms": ttft, "e2e_ms": total}
        if G > 1:
            samples["tpot_ms"] = step_matrix.flatten().tolist()  # every step of every run: what comparisons test
        info = {"runs": len(runs)}
        if runs[-1][4] is not None:
            info["decode_kernels"], info["decode_kernels_reason"] = runs[-1][4]
        return [ctx.record(metrics, samples=samples, info=info)]
