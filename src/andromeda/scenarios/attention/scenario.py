"""attention: attention implementations x sparsity patterns x shapes, measured alone (no model).

A case is one implementation at one shape point (pattern, causal, dtype, pass, seq_len). It measures
  latency_ms      ctx.time: CUDA events on GPU, perf_counter after synchronize elsewhere
  peak_mib        peak memory of one call: on CUDA the allocator peak and added_peak_mib that peak minus
                  what was in use before the call (inputs excluded); on CPU added_peak_mib is the call's
                  peak torch tensor allocations above its start (profiler events, memory.track_cpu_tensors)
                  and peak_mib the inputs (q, k, v, and dout for fwd_bwd) + that. Process RSS is
                  recorded only as rss_peak_mib / rss_delta_mib: it is not the call's memory.
  flops, tflops   4 * B * H * pairs * D forward; forward+backward adds the backward of the kernel:
                  2.5x forward where it recomputes the probabilities (flash-style: sdpa_flash,
                  sdpa_efficient, sdpa_cudnn, flex, triton, flash_attn, xformers), 2x where forward saved
                  them (eager, sdpa_math): flops.attention_recomputes. pairs = (query, key) pairs the
                  pattern keeps, so a sparse pattern is credited only with the work it needs
  effective_tflops  the dense pattern's FLOPs (every causal pair, or all N^2) over the same time: what
                  a sparse pattern's speed is worth against dense attention, not work done
  computed_flops, actual_tflops  (our triton kernel, which reports its tiles: model.backends.block_count)
                  the FLOPs of the tiles the kernel computed, counted in a separate untimed call, and over
                  the time: its arithmetic rate (whole tiles, masked diagonal entries and the backward's
                  recomputation included; below `flops` where it skips far ALiBi keys, above it otherwise)
  sparsity        1 - pairs / pairs of the dense pattern (causal: N(N+1)/2, else N^2)
  block_sparsity  1 - blocks computed / blocks of the dense pattern (block_size x block_size tiles)
  accuracy        max_abs_err, max_rel_err (= max_abs_err / max|ref|) of the output, and of dQ/dK/dV
                  for fwd_bwd, against a float64 reference of the same pattern on the same inputs
The model source of the manifest is not used: the runner needs one, any will do.
"""

from __future__ import annotations

import contextlib

import torch

from andromeda.errors import UnsupportedError
from andromeda.measure.flops import achieved_tflops, attention_recomputes, mfu
from andromeda.measure.memory import MIB, tensor_bytes, track_cpu_tensors, track_memory
from andromeda.model.backends.block_count import count_blocks
from andromeda.scenarios import register
from andromeda.scenarios.attention.impls import Problem, alibi_slopes, check_kernels, cuda_kernels, prepare
from andromeda.scenarios.attention.sparsity import Pattern, PatternSpec, get_pattern
from andromeda.scenarios.config.attention import AttentionConfig


def backward_factor(impl: str, device_type: str, dtype: str) -> float:
    """Attention backward FLOPs / forward FLOPs of `impl` (ARCHITECTURE.md): 2.5 where its backward recomputes
    the probabilities (q @ k^T again, then dP, dV, dQ, dK), 2.0 where forward saved them."""
    return 2.5 if attention_recomputes(impl, device_type, dtype) else 2.0


# max_rel_err above this flags the record (gradients: twice this): a wrong kernel, not rounding
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 1e-2}
_REF_ELEMS = 1 << 24  # float64 reference: at most B x rows x N score elements per head (128 MiB)


def make_inputs(prob: Problem, device: torch.device, seed: int):
    """q (B, H, N, D), k and v (B, H_kv, N, D), and an output gradient like q: standard normal, seeded."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(heads: int) -> torch.Tensor:
        return torch.randn(prob.batch, heads, prob.n, prob.head_dim, generator=g, device=device).to(prob.dtype)

    return rnd(prob.heads), rnd(prob.kv_heads), rnd(prob.kv_heads), rnd(prob.heads)


def reference_rows(n: int, batch: int, max_rows: int, device: torch.device) -> torch.Tensor:
    """Query rows the float64 reference covers: all, or evenly spaced ones (first and last included)."""
    s = min(n, max_rows, max(2, _REF_ELEMS // (batch * n)))
    if s >= n:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, s, device=device).round().long().unique()


def reference(q, k, v, dout, prob: Problem, pattern: Pattern, rows: torch.Tensor):
    """Float64 attention of the pattern on query `rows`, written from the definition; with prob.backward,
    the gradients of sum(out * dout) over those rows: dQ on those rows, dK and dV (all keys).

    Heads go in chunks that keep B x heads x rows x N score elements near _REF_ELEMS."""
    dev = q.device
    keep = pattern.keep_rows(rows)  # (S, N)
    b, s, n, d = prob.batch, len(rows), prob.n, prob.head_dim
    bias = None
    if prob.alibi:
        dist = (rows[:, None] - torch.arange(n, device=dev)[None, :]).abs().double()  # (S, N)
        bias = -alibi_slopes(prob.heads, str(dev)).double()[:, None, None] * dist  # (H, S, N)
    out = torch.empty(b, prob.heads, s, d, dtype=torch.float64, device=dev)
    grads = None
    if prob.backward:
        grads = (torch.empty_like(out), torch.zeros(k.shape, dtype=torch.float64, device=dev),
                 torch.zeros(v.shape, dtype=torch.float64, device=dev))
    chunk = max(1, min(prob.heads, _REF_ELEMS // (b * s * n)))
    with torch.enable_grad():
        for h0 in range(0, prob.heads, chunk):
            heads = torch.arange(h0, min(h0 + chunk, prob.heads), device=dev)
            kv = heads // prob.groups  # the K/V head of each query head
            qh = q[:, heads][:, :, rows].double().requires_grad_(prob.backward)  # (B, h, S, D)
            kh = k[:, kv].double().requires_grad_(prob.backward)  # (B, h, N, D)
            vh = v[:, kv].double().requires_grad_(prob.backward)
            scores = (qh @ kh.transpose(-1, -2)) * prob.scale  # (B, h, S, N)
            if bias is not None:
                scores = scores + bias[heads]
            o = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ vh  # (B, h, S, D)
            out[:, heads] = o.detach()
            if grads is not None:
                o.backward(dout[:, heads][:, :, rows].double())
                grads[0][:, heads] = qh.grad
                grads[1].index_add_(1, kv, kh.grad)
                grads[2].index_add_(1, kv, vh.grad)
    return out, grads


def _errors(x: torch.Tensor, ref: torch.Tensor, prefix: str = "") -> dict[str, float]:
    err = float((x.double() - ref).abs().max())
    size = float(ref.abs().max())
    return {f"{prefix}max_abs_err": err, f"{prefix}max_rel_err": err / size if size > 0 else err}


def accuracy(call, q, k, v, dout, prob: Problem, pattern: Pattern, rows: torch.Tensor) -> dict[str, float]:
    """The implementation's first call (its probe) against the float64 reference on `rows`.

    For fwd_bwd the output gradient is dout on `rows` and zero elsewhere, so dK and dV of the
    implementation hold exactly the contributions the reference computes.
    """
    if prob.backward:
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = call.probe(qg, kg, vg)
        d_rows = torch.zeros_like(dout)
        d_rows[:, :, rows] = dout[:, :, rows]
        out.backward(d_rows)
        got = (qg.grad[:, :, rows], kg.grad, vg.grad)
        del d_rows
    else:
        with torch.no_grad():
            out = call.probe(q, k, v)
    out_rows = out.detach()[:, :, rows]
    del out
    ref, ref_grads = reference(q, k, v, dout, prob, pattern, rows)
    metrics = _errors(out_rows, ref)
    if ref_grads is not None:
        for name, x, r in zip(("dq_", "dk_", "dv_"), got, ref_grads, strict=True):
            metrics.update(_errors(x, r, name))
    return metrics


@register("attention")
class Attention:
    Config = AttentionConfig

    def run(self, bundle, p, ctx):
        dev = ctx.device
        layout = tuple(tuple(r) for r in p["layout"]) if p.get("layout") else None
        spec = PatternSpec(name=p["pattern"], causal=p["causal"], window=p["window"], dilation=p["dilation"],
                           global_tokens=p["global_tokens"], random_blocks=p["random_blocks"],
                           block_size=p["block_size"], layout=layout, seed=ctx.seed)
        prob = Problem(batch=p["batch"], heads=p["heads"], kv_heads=p["kv_heads"], head_dim=p["head_dim"],
                       n=p["seq_len"], dtype=getattr(torch, p["dtype"]), pattern=spec, alibi=p["alibi"],
                       backward=p["pass"] == "fwd_bwd", dense_mask_max_len=p["dense_mask_max_len"])
        try:
            if (reason := spec.check(prob.n)) is not None:
                raise UnsupportedError(reason)
            pattern = get_pattern(spec, prob.n, dev)
            call = prepare(p["impl"], prob, pattern, dev)
            return [self._measure(call, prob, pattern, p, ctx)]
        except UnsupportedError as e:
            return ctx.skip(str(e))

    def _measure(self, call, prob: Problem, pattern: Pattern, p, ctx):
        dev, impl = ctx.device, p["impl"]
        q, k, v, dout = make_inputs(prob, dev, ctx.seed)
        rows = reference_rows(prob.n, prob.batch, p["ref_rows"], dev)
        acc = accuracy(call, q, k, v, dout, prob, pattern, rows)  # also the warm-up / compile call

        if prob.backward:
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

            def clear():
                qg.grad = kg.grad = vg.grad = None

            def fn():
                clear()
                call(qg, kg, vg).backward(dout)
        else:
            def clear():
                pass

            def fn():
                with torch.no_grad():
                    call(q, k, v)

        timing = ctx.time(fn)
        clear()
        tracker = track_cpu_tensors() if dev.type == "cpu" else contextlib.nullcontext()
        with track_memory(dev) as mem, tracker as tensors:
            fn()
        clear()
        count = None
        if impl == "triton":  # its tiles, in a call of its own (the counters would add to the memory measured)
            with count_blocks() as count:
                fn()
            clear()
        info = {"impl": impl, "how": call.info["how"], "dtype": p["dtype"], "stopped": timing.stopped,
                "noisy": timing.summary.noisy}
        info.update({k_: v_ for k_, v_ in call.info.items() if k_ != "how"})
        info["reference"] = ("float64, every query row" if len(rows) == prob.n else
                             f"float64 on {len(rows)} of {prob.n} query rows (evenly spaced, first and last included)"
                             + ("; dK/dV from those rows' output gradients only" if prob.backward else ""))
        info["blocks"] = {"block_size": prob.pattern.block_size, "full": pattern.blocks_full,
                          "partial": pattern.blocks_partial,
                          "empty": pattern.blocks_total - pattern.blocks_computed}
        warnings = []
        if dev.type == "cuda" and p["profile_kernels"]:
            try:
                info["kernels"] = cuda_kernels(fn, dev)
                problem = check_kernels(impl, info["kernels"])
                info["kernel_check"] = problem or "ok"
                if problem:
                    warnings.append(f"kernel check: {problem}")
            except Exception as e:  # noqa: BLE001 - a profiler failure must not cost the measurement
                info["kernels_error"] = f"{type(e).__name__}: {e}"
            clear()
        else:
            info["kernels"] = [impl]
        tol = TOLERANCE[p["dtype"]]
        for name, value in acc.items():
            limit = tol * (2 if name.startswith("d") else 1)
            if name.endswith("max_rel_err") and not value <= limit:
                warnings.append(f"accuracy: {name} = {value:.3g} exceeds the {p['dtype']} tolerance {limit:g}")
        if warnings:
            info["warnings"] = warnings

        passes = 1 + backward_factor(impl, dev.type, p["dtype"]) if prob.backward else 1.0
        per_pair = 4 * prob.batch * prob.heads * prob.head_dim  # scores + PV, forward, per (query, key) pair
        flops = per_pair * pattern.pairs * passes
        dense_flops = per_pair * pattern.baseline_pairs * passes
        seconds = timing.median_ms / 1e3
        metrics = {**timing.summary.to_metrics("latency_ms"), "flops": float(flops),
                   "tflops": achieved_tflops(flops, seconds), "dense_flops": float(dense_flops),
                   "effective_tflops": achieved_tflops(dense_flops, seconds)}
        info["backward_flops"] = (f"{passes - 1:g}x forward ({impl} "
                                  f"{'recomputes' if passes == 3.5 else 'saves'} the probabilities)"
                                  if prob.backward else "none (forward only)")
        if count is not None and count.parts:
            computed = sum(count.flops().values())
            metrics.update(computed_flops=float(computed), actual_tflops=achieved_tflops(computed, seconds))
            info["computed_tiles"] = count.tiles()
        u = mfu(flops, seconds, ctx.peak_for(p["dtype"]))
        if u is not None:
            metrics["mfu"] = u
        metrics.update({"pairs": float(pattern.pairs), "sparsity": pattern.sparsity,
                        "block_sparsity": pattern.block_sparsity})
        if dev.type == "cuda":
            metrics.update(peak_mib=mem.peak_allocated_mib, added_peak_mib=mem.delta_peak_allocated_mib)
        elif tensors is not None and tensors.peak_mib is not None:
            inputs = sum(tensor_bytes(t) for t in ((q, k, v, dout) if prob.backward else (q, k, v))) / MIB
            metrics.update(peak_mib=inputs + tensors.peak_mib, added_peak_mib=tensors.peak_mib)
            info["peak_mib"] = ("the inputs + the call's peak torch CPU tensor allocations (added_peak_mib); "
                                "not process RSS (rss_*)")
        else:  # never the process RSS under this name
            why = tensors.reason if tensors is not None else "no allocator peak on this device"
            info["peak_mib"] = f"not measured on {dev.type}: {why}; process RSS is rss_*"
        if mem.rss_peak_mib is not None:
            metrics.update(rss_peak_mib=mem.rss_peak_mib)
            if mem.rss_delta_mib is not None:
                metrics["rss_delta_mib"] = mem.rss_delta_mib
        metrics.update(acc)
        return ctx.record(metrics, samples={"latency_ms": timing.samples_ms}, info=info)
