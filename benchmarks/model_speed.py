"""Issue 9's model-level targets, side by side in one run on one CUDA GPU.

- prefill: the `andromeda` preset (2.46B) forward over 8K and 32K tokens at batch 1 (logits at the last
  position only), its MFU (causal FLOPs, LM head on one position) against the matmul rate measured in
  this run, and the matched Llama from transformers (SDPA) on the same tokens;
- decode: batch 1 after a 4K-token prompt, time per output token of Andromeda's generate (eager, and
  with the CUDA-graph step: torch kernels, compiled, fused Triton kernels) and of transformers'
  generate on the matched Llama, against the bandwidth floor (weights + KV-cache bytes per token over
  the copy bandwidth measured in this run).

Andromeda: n greedy steps after the prefill, timed as a whole (prefill, graph capture and compilation
before the clock): eager, CUDA graph, CUDA graph of the torch.compile'd step, CUDA graph of the fused
Triton step. transformers:
(time of generate(prompt, 1 + n) - time of generate(prompt, 1)) / n, the prefill and first token
cancelling out. Medians of 5.

    python benchmarks/model_speed.py [--presets andromeda,base] [--compile-prefill] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from andromeda.bench import floors
from andromeda.bench.env import collect_env
from andromeda.bench.facts import kv_cache_bytes_per_token
from andromeda.bench.flops import forward_flops
from andromeda.bench.sources import build
from andromeda.bench.timing import TimingConfig, time_fn

PROMPT_CTX = 4096
NEW = 64
LONG = 33792  # 32K prompt + room; pos_interpolation_factor 2 keeps 32K inside xPos's float32 range


def prefill_ms(bundle, n: int, compiled=None) -> float:
    """Median ms of a batch-1 prefill of n tokens; `compiled`: a torch.compile'd Andromeda to run instead."""
    x = torch.randint(0, 256, (1, n), device="cuda")
    if bundle.info["kind"] == "andromeda":
        model = bundle.model if compiled is None else compiled  # (a compiled module has no truth value)

        def fn():
            return model(x, logits="last")
    else:
        def fn():
            return bundle.model(input_ids=x, use_cache=False, logits_to_keep=1).logits
    with torch.inference_mode():
        return time_fn(fn, "cuda", TimingConfig(warmup=2, min_runs=5, max_runs=20, budget_s=3.0,
                                                target_rel_ci=0.02)).median_ms


def prefill_mfu(facts, n: int, ms: float, peak_tflops: float) -> float:
    """MFU of a batch-1 prefill of n tokens taking ms: causal FLOPs, LM head at the last position only."""
    f = forward_flops(facts, 1, n)
    return (f.total - f.lm_head * (n - 1) / n) / (ms / 1e3) / 1e12 / peak_tflops


def decode_floor_ms(bundle, copy_gb_per_s: float) -> float:
    """Bandwidth floor of one decode step after PROMPT_CTX tokens: weight + bf16 KV-cache bytes over copy speed."""
    weights = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    kv = kv_cache_bytes_per_token(bundle.facts, 2) * PROMPT_CTX
    return (weights + kv) / (copy_gb_per_s * 1e9) * 1e3


def _median_ms(run, reps: int) -> float:
    return statistics.median(run() for _ in range(reps))


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def hf_tpot_ms(model, reps: int = 5) -> float:
    """transformers' generate: (time of 1 + NEW tokens - time of 1 token) / NEW."""
    prompt = torch.randint(0, 256, (1, PROMPT_CTX), device="cuda")

    def gen(n):
        return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        gen(1 + NEW)  # warm-up
        long = _median_ms(lambda: _timed(lambda: gen(1 + NEW)), reps)
        short = _median_ms(lambda: _timed(lambda: gen(1)), reps)
    return (long - short) / NEW


def andromeda_tpot_ms(model, mode: str, reps: int = 5) -> float:
    """NEW greedy steps after a PROMPT_CTX-token prefill, timed as a whole; the prefill, the graph capture
    and the compilation happen before the clock starts. One cache and one decoder serve every repetition
    (reset and prefilled again). mode: eager | cuda_graph (the torch step) | compiled_graph (the torch step
    through torch.compile) | fused_graph (the fused Triton step, model/fused_decode.py)."""
    from andromeda.model import GraphedDecoder

    prompt = torch.randint(0, 256, (1, PROMPT_CTX), device="cuda")
    cache = model.new_cache(1, PROMPT_CTX + NEW + 1)
    dec = None if mode == "eager" else GraphedDecoder(model, cache, greedy=True, compile=mode == "compiled_graph",
                                                      kernels="triton" if mode == "fused_graph" else "torch")

    def once() -> float:
        with torch.inference_mode():
            cache.reset()
            first = model(prompt, cache=cache, logits="last")[:, -1].argmax(-1, keepdim=True)

            def steps():
                t = first
                for _ in range(NEW):
                    if dec is None:
                        t = model(t, cache=cache, logits="last")[:, -1].argmax(-1, keepdim=True)
                    else:
                        t = dec.step(t, clone=False)[1]

            return _timed(steps) / NEW

    once()  # warm-up
    return _median_ms(once, reps)


DECODE_MODES = ("eager", "cuda_graph", "compiled_graph", "fused_graph")


def decoders(bundle, modes=DECODE_MODES):
    if bundle.info["kind"] == "andromeda":
        return {mode: (lambda mode=mode: andromeda_tpot_ms(bundle.model, mode)) for mode in modes}
    return {"generate": lambda: hf_tpot_ms(bundle.model)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="andromeda,base")
    ap.add_argument("--compile-prefill", action="store_true", help="also time the prefill under torch.compile")
    ap.add_argument("--decode-modes", default=",".join(DECODE_MODES),
                    help=f"Andromeda decode variants to time, from {', '.join(DECODE_MODES)}")
    ap.add_argument("--json", help="results, rewritten after each model (a timeout keeps what was measured)")
    args = ap.parse_args()
    modes = [m for m in args.decode_modes.split(",") if m]
    if bad := sorted(set(modes) - set(DECODE_MODES)):
        ap.error(f"--decode-modes: unknown {', '.join(bad)}; choose from {', '.join(DECODE_MODES)}")
    fl = floors.measure("cuda")
    env = collect_env()
    peak, bw = fl["matmul_bf16_tflops"], fl["copy_gb_per_s"]
    print(f"floors: bf16 matmul {peak:.0f} TFLOP/s, copy {bw:.0f} GB/s")
    rows = []

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"floors": fl, "rows": rows, "env": env}, fh, indent=2)

    def prefill_rows(row, bundle, model=None, tag=""):
        for n in (8192, 32768):
            try:
                ms = prefill_ms(bundle, n, model)
            except Exception as e:  # noqa: BLE001 - a failed compile must not cost the other numbers
                row[f"prefill_{n}{tag}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                continue
            row[f"prefill_{n}{tag}_ms"] = ms
            row[f"prefill_{n}{tag}_mfu"] = prefill_mfu(bundle.facts, n, ms, peak)

    def report(row):
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        save()

    for preset in args.presets.split(","):
        for source in (f"andromeda:{preset}?max_seq_len={LONG}&pos_interpolation_factor=2",
                       f"hf:matched:{preset}?max_seq_len={LONG}"):
            torch.manual_seed(0)
            bundle = build(source, torch.device("cuda"), torch.bfloat16)
            facts = bundle.facts
            row = {"source": source, "preset": preset, "params": facts.params}
            rows.append(row)
            prefill_rows(row, bundle)
            floor_ms = decode_floor_ms(bundle, bw)
            row["decode_floor_ms"] = floor_ms
            for name, measure in decoders(bundle, modes).items():
                try:
                    t = measure()
                except Exception as e:  # noqa: BLE001 - one failed variant must not cost the others
                    row[f"tpot_{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    continue
                row[f"tpot_{name}_ms"] = t
                row[f"tpot_{name}_of_floor"] = floor_ms / t
            report(row)
            del bundle
            torch.cuda.empty_cache()
        if args.compile_prefill:  # last, so a slow compile cannot cost the side-by-side numbers above
            torch.manual_seed(0)
            bundle = build(f"andromeda:{preset}?max_seq_len={LONG}&pos_interpolation_factor=2",
                           torch.device("cuda"), torch.bfloat16)
            row = next(r for r in rows if r["preset"] == preset and r["source"].startswith("andromeda:"))
            prefill_rows(row, bundle, torch.compile(bundle.model), "_compiled")  # whole forward, default mode
            report(row)
            del bundle
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
