"""Issue 9's targets, all measured side by side in one run on one CUDA GPU, and one table of verdicts.

One command: the floors of this run (bf16 matmul rate and copy bandwidth, measured, beside the device's
datasheet peak and bandwidth), then

- attention at 8K and 32K tokens (causal, bf16, 24 heads, head dim 128): our kernel (the `triton` backend,
  whose forward on sm90 GPUs is the Gluon kernel of backends/gluon_flash_kernels.py) and
  FlexAttention on Andromeda's attention (1 KV head, ALiBi on 12 heads), cuDNN SDPA on plain causal
  MHA of the same shape (K/V expanded to 24 heads once, outside the timed call); forward and
  forward+backward (benchmarks/attention_kernels.py's timing);
- the `andromeda` preset (2.46B) prefill at 8K and 32K, eager and torch.compile'd, with MFU against the
  datasheet bf16 peak (`*_mfu`, the verdict's reading) and against the matmul rate measured in this run
  (`*_mfu_measured_peak`), beside the matched transformers Llama (SDPA);
- batch-1 decode after a 4K prompt: Andromeda's CUDA-graph step (fused Triton kernels; the torch step
  beside it) vs transformers `generate`, against the bandwidth floor: the bytes a step must read (the
  weights it multiplies, one embedding row, the KV cache; facts.decode_step_bytes) over the measured
  copy bandwidth (`*_decode_floor_ms`, the verdict's reading) and over the datasheet bandwidth
  (`*_decode_floor_datasheet_ms`) (benchmarks/model_speed.py's timing).

    python benchmarks/speed_targets.py [--json out.json]

The JSON is rewritten after each stage, so a run cut short keeps what it measured; it leads with the git
commit (and whether the tree differed from it), device, versions and floors (floors.provenance).

Attention rates, both printed: effective TFLOP/s are the dense causal FLOPs (every query against every
earlier key, 4*B*H*D*N(N+1)/2 forward, 3.5x that forward+backward) over the time, the same work counted for
every implementation; actual TFLOP/s (our kernel) are the FLOPs of the tiles it computed (its tile count,
taken in an untimed call: model.backends.block_count) over the same time. Our kernel skips, forward and
backward, the key blocks that causal ALiBi makes too small to count (under 2^-32 of a row's softmax sum;
triton_flash_kernels._first_needed_key), so on ALiBi heads its effective rate exceeds its actual one (and can
exceed the datasheet peak): the same output to float32 rounding in less time, not more arithmetic per
second. cuDNN and FlexAttention compute every causal pair: their effective rate is their actual one. Our
kernel also runs on the model's own q/k (`--inputs model` of attention_kernels.py: the preset's first
layer, QK-norm and xPos at their positions, random-initialized weights), where the key norms decide how
much it can skip.
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

from andromeda.measure import floors  # noqa: E402
from andromeda.measure.env import collect_env  # noqa: E402
from andromeda.sources.models import build  # noqa: E402

LENGTHS = (8192, 32768)
ATTN = {"triton": "triton (ALiBi, MQA)", "flex": "flex (ALiBi, MQA)", "cudnn": "cuDNN SDPA (plain causal MHA)"}
ANDROMEDA = f"andromeda:andromeda?max_seq_len={ms.LONG}&pos_interpolation_factor=2"
HF = f"hf:matched:andromeda?max_seq_len={ms.LONG}"


def _attention_line(name: str, n: int, backward: bool, r: dict) -> str:
    actual = (f", {r['actual_tflops']:6.1f} actual (computed tiles {r['computed_share']:.0%} of dense causal)"
              if "actual_tflops" in r else ", actual = effective (every causal pair computed)")
    return (f"attention {name:40s} {n:6d} {'fwd+bwd' if backward else 'fwd':8s} {r['ms']:9.3f} ms "
            f"{r['effective_tflops']:7.1f} effective TFLOP/s{actual}")


def attention(res: dict, save) -> None:
    table = ak.impls()
    for n in LENGTHS:
        b = max(1, 32768 // n)
        for key, name in ATTN.items():
            for backward in (False, True):
                r = ak.measure(table[name], b, n, backward)
                res["attention"][f"{key}_{'fwdbwd' if backward else 'fwd'}_{n}"] = r
                print(_attention_line(name, n, backward, r), flush=True)
                torch.cuda.empty_cache()
        *qkv, slopes, scale = ak.model_inputs(b, n)  # ours on the model's own q/k (QK-norm, xPos)
        fn = ak.impls(slopes=slopes, scale=scale)[ATTN["triton"]]
        for backward in (False, True):
            r = ak.measure(fn, b, n, backward, qkv)
            res["attention"][f"triton_model_qk_{'fwdbwd' if backward else 'fwd'}_{n}"] = r
            print(_attention_line(ATTN["triton"] + " model q/k", n, backward, r), flush=True)
        del qkv
        torch.cuda.empty_cache()
        save()


def prefill_fields(tag: str, n: int, facts, t_ms: float, fl: dict) -> dict[str, float]:
    """{tag}_prefill_{n}_ms, _mfu (datasheet peak; absent for an unknown device), _mfu_measured_peak."""
    return {f"{tag}_prefill_{n}_ms": t_ms,
            **{f"{tag}_prefill_{n}_{k}": v for k, v in ms.mfu_readings(facts, n, t_ms, fl).items()}}


def decode_fields(tag: str, readings: dict[str, float], tpots: dict[str, float]) -> dict[str, float]:
    """{tag}_decode_step_bytes, _decode_floor_ms (measured copy), _decode_floor_datasheet_ms, and for each
    time per output token {tag}_{name}_ms with its shares {tag}_{name}_of_floor / _of_datasheet_floor."""
    out = {f"{tag}_{k}": v for k, v in readings.items()}
    for name, t in tpots.items():
        out[f"{tag}_{name}_ms"] = t
        out.update({f"{tag}_{name}_{k}": v for k, v in ms.of_floor(readings, t).items()})
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def prefill(out: dict, tag: str, bundle, fl: dict, compiled=None) -> None:
    for n in LENGTHS:
        f = prefill_fields(tag, n, bundle.facts, ms.prefill_ms(bundle, n, compiled), fl)
        out.update(f)
        print(f"prefill {tag} {n // 1024}K: {f[f'{tag}_prefill_{n}_ms']:.1f} ms, MFU "
              f"{_pct(f.get(f'{tag}_prefill_{n}_mfu'))} of the datasheet peak, "
              f"{_pct(f[f'{tag}_prefill_{n}_mfu_measured_peak'])} of the measured matmul rate", flush=True)


def model(res: dict, save, fl: dict) -> None:
    out = res["model"]
    for tag, source in (("andromeda", ANDROMEDA), ("hf", HF)):
        torch.manual_seed(0)
        bundle = build(source, torch.device("cuda"), torch.bfloat16)
        prefill(out, tag, bundle, fl)
        readings = ms.floor_readings(ms.decode_bytes(bundle), fl)
        out[f"{tag}_decode_context"] = ms.FLOOR_CONTEXT
        if tag == "andromeda":  # the fused Triton step is what generate(cuda_graph=True) runs on a GPU
            tpots = {"torch_step_tpot": ms.andromeda_tpot_ms(bundle.model, "cuda_graph"),
                     "tpot": ms.andromeda_tpot_ms(bundle.model, "fused_graph")}
        else:
            tpots = {"tpot": ms.hf_tpot_ms(bundle.model)}
        out.update(decode_fields(tag, readings, tpots))
        for name in tpots:
            print(f"decode {tag} {name}: {out[f'{tag}_{name}_ms']:.3f} ms/token, "
                  f"{_pct(out[f'{tag}_{name}_of_floor'])} of the {readings['decode_floor_ms']:.3f} ms floor "
                  f"(measured copy), {_pct(out.get(f'{tag}_{name}_of_datasheet_floor'))} of the datasheet floor "
                  f"({readings['decode_step_bytes'] / 1e9:.3f} GB a step)", flush=True)
        save()
        del bundle
        torch.cuda.empty_cache()
    torch.manual_seed(0)  # the compiled prefill last: a slow compile cannot cost the numbers above
    bundle = build(ANDROMEDA, torch.device("cuda"), torch.bfloat16)
    prefill(out, "andromeda_compiled", bundle, fl, torch.compile(bundle.model))
    save()


def verdicts(res: dict) -> list[dict]:
    """(target, needed, measured, met, also) rows from whatever was measured; `also` is the second reading."""
    a, m = res["attention"], res["model"]
    rows = []

    def add(target, needed, value, ok, fmt="{:.2f}x", also=""):
        rows.append({"target": target, "needed": needed, "measured": fmt.format(value), "met": ok, "also": also})

    def eff(key):
        return a[key]["effective_tflops"]

    def ours(key):  # our kernel's actual rate and the share of dense causal work it computed, where counted
        r = a[key]
        return (f"ours {r['actual_tflops']:.0f} actual TFLOP/s, {r['computed_share']:.0%} of dense computed"
                if "actual_tflops" in r else "")

    for n in LENGTHS:
        k = n // 1024
        if f"triton_fwd_{n}" in a and f"cudnn_fwd_{n}" in a:
            r = eff(f"triton_fwd_{n}") / eff(f"cudnn_fwd_{n}")
            add(f"attention fwd {k}K vs cuDNN (effective)", ">= 0.85x", r, r >= 0.85, also=ours(f"triton_fwd_{n}"))
            r = eff(f"triton_fwd_{n}") / eff(f"flex_fwd_{n}")
            add(f"attention fwd {k}K vs FlexAttention (effective)", ">= 2x", r, r >= 2.0)
            r = eff(f"triton_fwdbwd_{n}") / eff(f"cudnn_fwdbwd_{n}")
            add(f"attention fwd+bwd {k}K vs cuDNN (effective)", ">= 0.75x", r, r >= 0.75,
                also=ours(f"triton_fwdbwd_{n}"))
    for n, need in ((8192, 0.55), (32768, 0.65)):
        k = n // 1024
        for variant in ("", "compiled_"):
            key = f"andromeda_{variant}prefill_{n}"
            how = variant.rstrip("_") or "eager"
            if f"{key}_mfu" in m:
                u = m[f"{key}_mfu"]
                add(f"prefill {k}K MFU, datasheet peak ({how})", f">= {need:.0%}", u, u >= need, "{:.1%}",
                    f"{_pct(m.get(f'{key}_mfu_measured_peak'))} of measured matmul rate")
            elif f"{key}_mfu_measured_peak" in m:  # a device the datasheet table does not know
                u = m[f"{key}_mfu_measured_peak"]
                add(f"prefill {k}K MFU, measured matmul rate ({how})", f">= {need:.0%}", u, u >= need, "{:.1%}",
                    "datasheet peak unknown")
            if f"{key}_ms" in m and f"hf_prefill_{n}_ms" in m:
                r = m[f"{key}_ms"] / m[f"hf_prefill_{n}_ms"]
                add(f"prefill {k}K time vs HF Llama ({how})", "<= 1.00x", r, r <= 1.0)
    if "andromeda_tpot_ms" in m:
        r = m["andromeda_decode_floor_ms"] / m["andromeda_tpot_ms"]
        sheet = m.get("andromeda_decode_floor_datasheet_ms")
        add("decode 4K: share of bandwidth floor (measured copy)", ">= 80%", r, r >= 0.8, "{:.1%}",
            f"{_pct(None if sheet is None else sheet / m['andromeda_tpot_ms'])} of datasheet floor")
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
    res = {**floors.provenance(collect_env(), fl), "attention": {}, "model": {}}

    def save():
        res["verdicts"] = verdicts(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))

    print(ms.floors_line(fl))
    attention(res, save)
    model(res, save, fl)
    save()
    print(f"\n{'target':52s} {'needed':>9s} {'measured':>9s}  {'verdict':7s} second reading")
    for r in res["verdicts"]:
        print(f"{r['target']:52s} {r['needed']:>9s} {r['measured']:>9s}  {'met' if r['met'] else 'MISSED':7s} "
              f"{r['also']}")


if __name__ == "__main__":
    main()
