"""Issue 9's targets, all measured side by side in one run on one CUDA GPU, and one table of verdicts.

One command: the floors of this run (bf16 matmul rate, copy bandwidth), then

- attention at 8K and 32K tokens (causal, bf16, 24 heads, head dim 128): our kernel (the `triton` backend,
  whose forward on sm90 GPUs is the Gluon kernel of backends/gluon_flash_kernels.py) and
  FlexAttention on Andromeda's attention (1 KV head, ALiBi on 12 heads), cuDNN SDPA on plain causal
  MHA of the same shape; forward and forward+backward (benchmarks/attention_kernels.py's timing);
- the `andromeda` preset (2.46B) prefill at 8K and 32K, eager and torch.compile'd, with MFU against the
  measured matmul rate, beside the matched transformers Llama (SDPA);
- batch-1 decode after a 4K prompt: Andromeda's CUDA-graph step (fused Triton kernels; the torch step
  beside it) vs transformers `generate`, and
  against the bandwidth floor (weights + KV bytes per token over the measured copy bandwidth)
  (benchmarks/model_speed.py's timing).

    python benchmarks/speed_targets.py [--json out.json]

The JSON is rewritten after each stage, so a run cut short keeps what it measured.

TFLOP/s and MFU count the dense causal work (every query against every earlier key) for every
implementation. Our kernel skips, forward and backward, the key blocks that causal ALiBi makes too small
to count (under 2^-32 of a row's softmax sum; triton_flash_kernels._first_needed_key), so on ALiBi heads
its rates are effective rates: the same output to float32 rounding in less time, not more arithmetic
per second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

import attention_kernels as ak  # noqa: E402
import model_speed as ms  # noqa: E402

from andromeda.bench import floors  # noqa: E402
from andromeda.bench.env import collect_env  # noqa: E402
from andromeda.bench.sources import build  # noqa: E402

LENGTHS = (8192, 32768)
ATTN = {"triton": "triton (ALiBi, MQA)", "flex": "flex (ALiBi, MQA)", "cudnn": "cuDNN SDPA (plain causal MHA)"}
ANDROMEDA = f"andromeda:andromeda?max_seq_len={ms.LONG}&pos_interpolation_factor=2"
HF = f"hf:matched:andromeda?max_seq_len={ms.LONG}"


def attention(res: dict, save) -> None:
    table = ak.impls()
    for n in LENGTHS:
        for key, name in ATTN.items():
            for backward in (False, True):
                r = ak.measure(table[name], max(1, 32768 // n), n, backward)
                res["attention"][f"{key}_{'fwdbwd' if backward else 'fwd'}_{n}"] = r
                print(f"attention {name:32s} {n:6d} {'fwd+bwd' if backward else 'fwd':8s} "
                      f"{r['ms']:9.3f} ms {r['tflops']:6.1f} TFLOP/s", flush=True)
                torch.cuda.empty_cache()
        save()


def prefill(out: dict, tag: str, bundle, peak: float, compiled=None) -> None:
    for n in LENGTHS:
        t = ms.prefill_ms(bundle, n, compiled)
        out[f"{tag}_prefill_{n}_ms"], out[f"{tag}_prefill_{n}_mfu"] = t, ms.prefill_mfu(bundle.facts, n, t, peak)


def model(res: dict, save, peak: float, bw: float) -> None:
    out = res["model"]
    for tag, source in (("andromeda", ANDROMEDA), ("hf", HF)):
        torch.manual_seed(0)
        bundle = build(source, torch.device("cuda"), torch.bfloat16)
        prefill(out, tag, bundle, peak)
        out[f"{tag}_decode_floor_ms"] = ms.decode_floor_ms(bundle, bw)
        if tag == "andromeda":  # the fused Triton step is what generate(cuda_graph=True) runs on a GPU
            out[f"{tag}_torch_step_tpot_ms"] = ms.andromeda_tpot_ms(bundle.model, "cuda_graph")
            out[f"{tag}_tpot_ms"] = ms.andromeda_tpot_ms(bundle.model, "fused_graph")
        else:
            out[f"{tag}_tpot_ms"] = ms.hf_tpot_ms(bundle.model)
        print(f"model {tag}: " + ", ".join(f"{k[len(tag) + 1:]} {v:.4g}" for k, v in out.items()
                                           if k.startswith(tag)), flush=True)
        save()
        del bundle
        torch.cuda.empty_cache()
    torch.manual_seed(0)  # the compiled prefill last: a slow compile cannot cost the numbers above
    bundle = build(ANDROMEDA, torch.device("cuda"), torch.bfloat16)
    prefill(out, "andromeda_compiled", bundle, peak, torch.compile(bundle.model))
    print(f"model andromeda compiled prefill: {out['andromeda_compiled_prefill_8192_ms']:.1f} / "
          f"{out['andromeda_compiled_prefill_32768_ms']:.1f} ms", flush=True)
    save()


def verdicts(res: dict) -> list[dict]:
    """(target, needed, measured, met) rows from whatever was measured."""
    a, m = res["attention"], res["model"]
    rows = []

    def add(target, needed, value, ok, fmt="{:.2f}x"):
        rows.append({"target": target, "needed": needed, "measured": fmt.format(value), "met": ok})

    for n in LENGTHS:
        k = n // 1024
        if f"triton_fwd_{n}" in a and f"cudnn_fwd_{n}" in a:
            tri = a[f"triton_fwd_{n}"]["tflops"]
            add(f"attention fwd {k}K vs cuDNN", ">= 0.85x", tri / a[f"cudnn_fwd_{n}"]["tflops"],
                tri / a[f"cudnn_fwd_{n}"]["tflops"] >= 0.85)
            add(f"attention fwd {k}K vs FlexAttention", ">= 2x", tri / a[f"flex_fwd_{n}"]["tflops"],
                tri / a[f"flex_fwd_{n}"]["tflops"] >= 2.0)
            r = a[f"triton_fwdbwd_{n}"]["tflops"] / a[f"cudnn_fwdbwd_{n}"]["tflops"]
            add(f"attention fwd+bwd {k}K vs cuDNN", ">= 0.75x", r, r >= 0.75)
    for n, need in ((8192, 0.55), (32768, 0.65)):
        k = n // 1024
        for variant in ("", "compiled_"):
            key = f"andromeda_{variant}prefill_{n}"
            if f"{key}_mfu" in m:
                add(f"prefill {k}K MFU ({variant.rstrip('_') or 'eager'})", f">= {need:.0%}", m[f"{key}_mfu"],
                    m[f"{key}_mfu"] >= need, "{:.1%}")
                if f"hf_prefill_{n}_ms" in m:
                    r = m[f"{key}_ms"] / m[f"hf_prefill_{n}_ms"]
                    add(f"prefill {k}K time vs HF Llama ({variant.rstrip('_') or 'eager'})", "<= 1.00x", r, r <= 1.0)
    if "andromeda_tpot_ms" in m:
        r = m["andromeda_decode_floor_ms"] / m["andromeda_tpot_ms"]
        add("decode 4K: share of bandwidth floor", ">= 80%", r, r >= 0.8, "{:.1%}")
        if "hf_tpot_ms" in m:
            r = m["hf_tpot_ms"] / m["andromeda_tpot_ms"]
            add("decode 4K: speed-up vs HF generate", ">= 3x", r, r >= 3.0)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("speed_targets.py: needs a CUDA GPU (the targets are H100 numbers)")
    fl = floors.measure("cuda")
    res = {"floors": fl, "attention": {}, "model": {}, "env": collect_env()}

    def save():
        res["verdicts"] = verdicts(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))

    print(f"floors: bf16 matmul {fl['matmul_bf16_tflops']:.0f} TFLOP/s, copy {fl['copy_gb_per_s']:.0f} GB/s")
    attention(res, save)
    model(res, save, fl["matmul_bf16_tflops"], fl["copy_gb_per_s"])
    save()
    print(f"\n{'target':44s} {'needed':>9s} {'measured':>9s}  verdict")
    for r in res["verdicts"]:
        print(f"{r['target']:44s} {r['needed']:>9s} {r['measured']:>9s}  {'met' if r['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
