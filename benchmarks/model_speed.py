"""Issue 9's model-level targets, side by side in one run on one CUDA GPU.

- prefill: the `andromeda` preset (2.46B) forward over 8K and 32K tokens at batch 1 (logits at the last
  position only), its MFU (causal FLOPs, LM head on one position) against the device's datasheet bf16
  peak (`mfu`) and against the matmul rate measured in this run (`mfu_measured_peak`), and the matched
  Llama from transformers (SDPA) on the same tokens;
- decode: batch 1 after a 4K-token prompt, time per output token of Andromeda's generate (eager, and
  with the CUDA-graph step: torch kernels, compiled, fused Triton kernels) and of transformers'
  generate on the matched Llama, against the bandwidth floor: the bytes a step must read
  (facts.decode_step_bytes: the weights it multiplies, one embedding row, the KV cache at the mean
  context of the timed steps) over the copy bandwidth measured in this run (`decode_floor_ms`) and over
  the datasheet bandwidth (`decode_floor_datasheet_ms`).

Andromeda: n greedy steps after the prefill, timed as a whole (prefill, graph capture and compilation
before the clock): eager, CUDA graph, CUDA graph of the torch.compile'd step, CUDA graph of the fused
Triton step. transformers:
(time of generate(prompt, 1 + n) - time of generate(prompt, 1)) / n, the prefill and first token
cancelling out. Medians of 5. The JSON leads with floors.provenance(): git commit, device, versions, floors.

    python benchmarks/model_speed.py [--presets andromeda,base] [--compile-prefill] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.facts import decode_step_bytes
from andromeda.measure.flops import forward_flops, mfu
from andromeda.measure.timing import TimingConfig, time_fn
from andromeda.sources.models import build

PROMPT_CTX = 4096
NEW = 64
LONG = 33792  # 32K prompt + room; pos_interpolation_factor 2 keeps 32K inside xPos's float32 range
# keys a timed decode step attends to, averaged over the NEW steps: step i (0-based) feeds the token at
# position PROMPT_CTX + i and attends to PROMPT_CTX + 1 + i keys (the prompt, the tokens since, itself)
FLOOR_CONTEXT = PROMPT_CTX + (NEW + 1) / 2


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


def prefill_flops(facts, n: int) -> float:
    """FLOPs of a batch-1 prefill of n tokens: causal attention, the LM head at the last position only."""
    return forward_flops(facts, 1, n, lm_head="last").total


def prefill_mfu(facts, n: int, ms: float, peak_tflops: float | None) -> float | None:
    """MFU of a batch-1 prefill of n tokens taking ms against peak_tflops; None when the peak is unknown."""
    return mfu(prefill_flops(facts, n), ms / 1e3, peak_tflops)


def mfu_readings(facts, n: int, ms: float, fl: dict) -> dict[str, float]:
    """Both MFU readings of a prefill: `mfu` against the datasheet bf16 peak (absent for a device the table
    does not know) and `mfu_measured_peak` against the bf16 matmul rate measured in this run."""
    out = {}
    if (u := prefill_mfu(facts, n, ms, fl.get("datasheet_bf16_tflops"))) is not None:
        out["mfu"] = u
    out["mfu_measured_peak"] = prefill_mfu(facts, n, ms, fl["matmul_bf16_tflops"])
    return out


def decode_bytes(bundle, context: float = FLOOR_CONTEXT) -> float:
    """Bytes a batch-1 decode step of this model must read with `context` keys (weights and KV cache in the
    model's dtype)."""
    elem = next(bundle.model.parameters()).element_size()
    return decode_step_bytes(bundle.facts, context, elem, elem)


def decode_floor_ms(bundle, gb_per_s: float, context: float = FLOOR_CONTEXT) -> float:
    """Bandwidth floor (ms) of one decode step: decode_bytes over gb_per_s (measured copy or datasheet)."""
    return floors.floor_ms(decode_bytes(bundle, context), gb_per_s)


def floor_readings(step_bytes: float, fl: dict) -> dict[str, float]:
    """decode_step_bytes, decode_floor_ms (over the measured copy bandwidth) and decode_floor_datasheet_ms
    (over the datasheet bandwidth; absent for a device the table does not know)."""
    out = {"decode_step_bytes": step_bytes, "decode_floor_ms": floors.floor_ms(step_bytes, fl["copy_gb_per_s"])}
    if (d := floors.floor_ms(step_bytes, fl.get("datasheet_gb_per_s"))) is not None:
        out["decode_floor_datasheet_ms"] = d
    return out


def of_floor(readings: dict[str, float], tpot_ms: float) -> dict[str, float]:
    """Share of each floor a decode time reaches: of_floor (measured copy) and of_datasheet_floor."""
    out = {"of_floor": readings["decode_floor_ms"] / tpot_ms}
    if "decode_floor_datasheet_ms" in readings:
        out["of_datasheet_floor"] = readings["decode_floor_datasheet_ms"] / tpot_ms
    return out


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


def floors_line(fl: dict) -> str:
    """The floors of this run, measured beside the datasheet's."""
    def sheet(key, unit):
        return f"datasheet {fl[key]:.0f} {unit}" if fl.get(key) else "datasheet unknown"

    return (f"floors ({fl.get('device')}): bf16 matmul measured {fl['matmul_bf16_tflops']:.0f} TFLOP/s, "
            f"{sheet('datasheet_bf16_tflops', 'TFLOP/s')}; copy measured {fl['copy_gb_per_s']:.0f} GB/s, "
            f"{sheet('datasheet_gb_per_s', 'GB/s')}")


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
    head = floors.provenance(collect_env(), fl)
    print(floors_line(fl))
    rows = []

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({**head, "rows": rows}, fh, indent=2)

    def prefill_rows(row, bundle, model=None, tag=""):
        for n in (8192, 32768):
            try:
                ms = prefill_ms(bundle, n, model)
            except Exception as e:  # noqa: BLE001 - a failed compile must not cost the other numbers
                row[f"prefill_{n}{tag}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                continue
            row[f"prefill_{n}{tag}_ms"] = ms
            row.update({f"prefill_{n}{tag}_{k}": v for k, v in mfu_readings(bundle.facts, n, ms, fl).items()})

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
            readings = floor_readings(decode_bytes(bundle), fl)
            row.update(readings, decode_context=FLOOR_CONTEXT)
            for name, measure in decoders(bundle, modes).items():
                try:
                    t = measure()
                except Exception as e:  # noqa: BLE001 - one failed variant must not cost the others
                    row[f"tpot_{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    continue
                row[f"tpot_{name}_ms"] = t
                row.update({f"tpot_{name}_{k}": v for k, v in of_floor(readings, t).items()})
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
