"""memory: peak memory over batch sizes and sequence lengths; KV-cache bytes per token.

Weights are the model's parameter and buffer bytes. On GPU, peak is the CUDA allocator's peak
(allocated) and activations the peak minus what was allocated before the pass. On CPU, activations
are the pass's peak torch tensor allocations above its start (profiler allocation events; memory.py)
and peak is weights + activations; the process RSS (rss_*) is reported under its own name only: it
holds the interpreter, torch and reused heap pages, not this model's memory. Elsewhere (MPS) peak and
activations are left out, with the reason in info["peak_mib"]. The KV cache is filled by a real cached prefill and
its bytes per token are set beside the analytic 2 * layers * kv_heads * head_dim * bytes.
"""

from __future__ import annotations

import contextlib
import gc

import torch

from andromeda.errors import UnsupportedError
from andromeda.measure.facts import kv_cache_bytes_per_token, quantized_kv_bytes_per_token
from andromeda.measure.memory import module_bytes, track_cpu_tensors, track_memory
from andromeda.scenarios import register
from andromeda.scenarios.common import (
    check_length,
    random_tokens,
    zero_grads,
)
from andromeda.scenarios.config.memory import MemoryConfig
from andromeda.scenarios.decoding import Decoder

MiB = 2**20


@register("memory")
class Memory:
    Config = MemoryConfig

    def run(self, bundle, p, ctx):
        batch, seq = p["batch"], p["seq_len"]
        if (reason := check_length(bundle, seq)) is not None:
            return ctx.skip(reason)
        tokens = random_tokens(bundle, batch, seq, ctx.device, ctx.seed)
        weights = module_bytes(bundle.model)
        gc.collect()
        tracker = track_cpu_tensors() if ctx.device.type == "cpu" else contextlib.nullcontext()
        with track_memory(ctx.device) as mem, tracker as tensors:
            if p["mode"] == "train":
                bundle.loss(tokens).backward()
            else:
                with torch.inference_mode():
                    bundle.logits(tokens)
        zero_grads(bundle.model)
        metrics = {"weights_mib": weights / MiB, **mem.to_metrics()}
        info = {"rss_method": mem.rss_method}
        if ctx.device.type == "cuda":
            metrics["peak_mib"] = mem.peak_allocated_mib
            metrics["activations_mib"] = mem.delta_peak_allocated_mib
        elif tensors is not None and tensors.peak_mib is not None:
            metrics["activations_mib"] = tensors.peak_mib
            metrics["peak_mib"] = weights / MiB + tensors.peak_mib
            info["peak_mib"] = "weights + the pass's peak torch CPU tensor allocations (not process RSS: rss_*)"
        else:  # never the process RSS under this name
            why = tensors.reason if tensors is not None else "no allocator peak on this device"
            info["peak_mib"] = f"not measured on {ctx.device.type}: {why}; process RSS is rss_*"
        if p["kv_cache"] and p["mode"] == "inference":
            if p["cache"] == "full":
                elem = torch.tensor([], dtype=ctx.dtype).element_size()
                analytic = kv_cache_bytes_per_token(bundle.facts, elem)
            else:  # codes + float32 scales; a full-precision window adds window x full bytes per sequence
                analytic = quantized_kv_bytes_per_token(bundle.facts, int(p["cache"][3:]), p["cache_group_size"])
            metrics["kv_bytes_per_token_analytic"] = analytic
            try:
                dec = Decoder(bundle, batch, seq, use_cache=True, cache=p["cache"],
                              group_size=p["cache_group_size"], window=p["cache_window"])
                dec.prefill(tokens)
                measured = dec.cache_bytes()
                metrics["kv_cache_mib"] = measured / MiB
                metrics["kv_bytes_per_token_measured"] = measured / (batch * seq)
                del dec
            except UnsupportedError as e:
                info["kv_cache"] = str(e)
        return [ctx.record(metrics, info=info)]
