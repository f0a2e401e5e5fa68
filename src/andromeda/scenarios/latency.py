"""latency: forward, backward, forward+backward, inference, end-to-end and per-batch time.

Modes
  forward    model forward under no_grad
  inference  model forward under inference_mode
  backward   loss.backward() alone (the forward runs untimed before each sample)
  fwd_bwd    forward, loss and backward
  e2e        tokenize a text of seq_len bytes, forward, pick the next token, decode it to text

Besides the time, tokens/s and FLOPs (backward per the model's attention kernel), one more untimed
call measures peak memory: peak_mib is the CUDA allocator's peak on GPU; on CPU the weights (parameter
and buffer bytes) + the call's peak torch tensor allocations above its start (activations_mib, from the
profiler's allocation events: memory.track_cpu_tensors). The process RSS is never peak_mib: it is
recorded as rss_peak_mib. Elsewhere (MPS) peak_mib is left out with the reason in info["peak_mib"].
"""

from __future__ import annotations

import contextlib

import torch

from andromeda.measure.flops import backward_flops, forward_flops
from andromeda.measure.memory import MIB, module_bytes, track_cpu_tensors, track_memory
from andromeda.measure.recompute import model_attention_recompute
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, flop_metrics, random_tokens, zero_grads
from andromeda.scenarios.config.latency import LatencyConfig


def _text(n: int) -> str:
    base = "Andromeda measures every number it names. "
    return (base * (n // len(base) + 1))[:n]


@register("latency")
class Latency:
    Config = LatencyConfig

    def run(self, bundle, p, ctx):
        mode, batch, seq = p["mode"], p["batch"], p["seq_len"]
        if (reason := check_length(bundle, seq)) is not None:
            return ctx.skip(reason)
        model = bundle.model
        tokens = random_tokens(bundle, batch, seq, ctx.device, ctx.seed)
        fwd = forward_flops(bundle.facts, batch, seq)
        recompute = model_attention_recompute(bundle.model, ctx.device, ctx.dtype)  # attention bwd 2.5x or 2x
        flops = fwd.total
        setup = None
        if mode == "forward":
            def fn():
                with torch.no_grad():
                    return bundle.logits(tokens)
        elif mode == "inference":
            def fn():
                with torch.inference_mode():
                    return bundle.logits(tokens)
        elif mode == "fwd_bwd":
            flops = fwd.total + backward_flops(fwd, attention_recompute=recompute).total

            def fn():
                zero_grads(model)
                bundle.loss(tokens).backward()
        elif mode == "backward":
            flops = backward_flops(fwd, attention_recompute=recompute).total
            state = {}

            def setup():
                zero_grads(model)
                state["loss"] = bundle.loss(tokens)

            def fn():
                state.pop("loss").backward()
        else:  # e2e
            tok = bundle.tokenizer
            texts = [_text(seq)] * batch

            def fn():
                ids = torch.tensor([tok.encode(t)[:seq] for t in texts], device=ctx.device)
                with torch.inference_mode():
                    nxt = bundle.logits(ids)[:, -1].argmax(-1)
                return [tok.decode([int(i)]) for i in nxt.tolist()]

        timing = ctx.time(fn, setup)
        if mode in ("backward", "fwd_bwd"):
            zero_grads(model)
        memory, info = peak_memory(model, fn, setup, ctx.device)
        if mode in ("backward", "fwd_bwd"):
            zero_grads(model)
        seconds = timing.median_ms / 1e3
        metrics = {
            **timing.summary.to_metrics("latency_ms"),
            "tokens_per_s": batch * seq / seconds,
            "sequences_per_s": batch / seconds,
            "ms_per_sequence": timing.median_ms / batch,
            **flop_metrics(flops, seconds, ctx.peak_tflops),
            **memory,
        }
        return [ctx.record(metrics, samples={"latency_ms": timing.samples_ms},
                           info={"stopped": timing.stopped, "noisy": timing.summary.noisy, **info})]


def peak_memory(model, fn, setup, device: torch.device) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, info) of one untimed call of fn (after setup): peak_mib as the module docstring says,
    activations_mib on CPU, rss_peak_mib wherever the process RSS is known."""
    if setup is not None:
        setup()
    tracker = track_cpu_tensors() if device.type == "cpu" else contextlib.nullcontext()
    with track_memory(device) as mem, tracker as tensors:
        fn()
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    if device.type == "cuda":
        metrics["peak_mib"] = mem.peak_allocated_mib
    elif tensors is not None and tensors.peak_mib is not None:
        metrics["activations_mib"] = tensors.peak_mib
        metrics["peak_mib"] = module_bytes(model) / MIB + tensors.peak_mib
        info["peak_mib"] = "weights + the call's peak torch CPU tensor allocations (not process RSS: rss_peak_mib)"
    else:  # never the process RSS under this name
        why = tensors.reason if tensors is not None else "no allocator peak on this device"
        info["peak_mib"] = f"not measured on {device.type}: {why}; process RSS is rss_peak_mib"
    if mem.rss_peak_mib is not None:
        metrics["rss_peak_mib"] = mem.rss_peak_mib
    return metrics, info
