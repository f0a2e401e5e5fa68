"""memory: peak memory over batch sizes and sequence lengths; KV-cache bytes per token.

Weights are the model's parameter and buffer bytes. Peak is the CUDA allocator's peak
(allocated and reserved) on GPU, the process's peak RSS elsewhere; activations are the peak
minus what was resident before the pass. The KV cache is filled by a real cached prefill and
its bytes per token are set beside the analytic 2 * layers * kv_heads * head_dim * bytes.
"""

from __future__ import annotations

import gc

import torch

from andromeda.bench.decoding import Decoder
from andromeda.bench.facts import kv_cache_bytes_per_token, quantized_kv_bytes_per_token
from andromeda.bench.memory import module_bytes, track_memory
from andromeda.bench.scenarios import register
from andromeda.bench.scenarios.common import (
    check_length,
    random_tokens,
    zero_grads,
)
from andromeda.bench.scenarios.config.memory import MemoryConfig
from andromeda.errors import UnsupportedError

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
        with track_memory(ctx.device) as mem:
            if p["mode"] == "train":
                bundle.loss(tokens).backward()
            else:
                with torch.inference_mode():
                    bundle.logits(tokens)
        zero_grads(bundle.model)
        metrics = {"weights_mib": weights / MiB, **mem.to_metrics()}
        if ctx.device.type == "cuda":
            metrics["peak_mib"] = mem.peak_allocated_mib
            metrics["activations_mib"] = mem.delta_peak_allocated_mib
        else:
            metrics["peak_mib"] = mem.rss_peak_mib
            metrics["activations_mib"] = mem.rss_delta_mib
        info = {"rss_method": mem.rss_method}
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
