"""latency: forward, backward, forward+backward, inference, end-to-end and per-batch time.

Modes
  forward    model forward under no_grad
  inference  model forward under inference_mode
  backward   loss.backward() alone (the forward runs untimed before each sample)
  fwd_bwd    forward, loss and backward
  e2e        tokenize a text of seq_len bytes, forward, pick the next token, decode it to text
"""

from __future__ import annotations

import torch

from andromeda.bench.flops import backward_flops, forward_flops
from andromeda.bench.recompute import model_attention_recompute
from andromeda.bench.scenarios import register
from andromeda.bench.scenarios.common import check_length, flop_metrics, random_tokens, zero_grads
from andromeda.bench.scenarios.config.latency import LatencyConfig


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
        seconds = timing.median_ms / 1e3
        metrics = {
            **timing.summary.to_metrics("latency_ms"),
            "tokens_per_s": batch * seq / seconds,
            "sequences_per_s": batch / seconds,
            "ms_per_sequence": timing.median_ms / batch,
            **flop_metrics(flops, seconds, ctx.peak_tflops),
        }
        return [ctx.record(metrics, samples={"latency_ms": timing.samples_ms},
                           info={"stopped": timing.stopped, "noisy": timing.summary.noisy})]
