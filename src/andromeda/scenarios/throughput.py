"""throughput: tokens/s and sequences/s over batch sizes, until the largest batch or OOM.

The runner skips every batch larger than one that ran out of memory.
"""

from __future__ import annotations

import torch

from andromeda.measure.flops import backward_flops, forward_flops
from andromeda.measure.recompute import model_attention_recompute
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, flop_metrics, random_tokens, zero_grads
from andromeda.scenarios.config.throughput import ThroughputConfig


@register("throughput")
class Throughput:
    Config = ThroughputConfig

    def run(self, bundle, p, ctx):
        batch, seq = p["batch"], p["seq_len"]
        if (reason := check_length(bundle, seq)) is not None:
            return ctx.skip(reason)
        tokens = random_tokens(bundle, batch, seq, ctx.device, ctx.seed)
        fwd = forward_flops(bundle.facts, batch, seq)
        recompute = model_attention_recompute(bundle.model, ctx.device, ctx.dtype)  # attention bwd 2.5x or 2x
        if p["mode"] == "train":
            flops = fwd.total + backward_flops(fwd, attention_recompute=recompute).total

            def fn():
                zero_grads(bundle.model)
                bundle.loss(tokens).backward()
        else:
            flops = fwd.total

            def fn():
                with torch.inference_mode():
                    bundle.logits(tokens)

        timing = ctx.time(fn)
        zero_grads(bundle.model)
        s = timing.median_ms / 1e3
        metrics = {"tokens_per_s": batch * seq / s, "sequences_per_s": batch / s,
                   **timing.summary.to_metrics("latency_ms"), **flop_metrics(flops, s, ctx.peak_tflops)}
        return [ctx.record(metrics, samples={"latency_ms": timing.samples_ms})]
