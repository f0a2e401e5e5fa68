"""Batch-1 decode kernels on one CUDA GPU, side by side in one run.

- GEMV: each weight shape of a preset's decode step (q|k|v, out, w_in, w_out, LM head), our Triton
  GEMV (model/decode_kernels.py) against cuBLAS through F.linear (the torch step's call; q, k, v as three
  calls), in GB/s of weight read and as a share of the copy bandwidth measured in this run. Each timed
  run streams enough copies of the weight (>= 384 MB) that the 50 MB L2 cannot serve them, captured in
  one CUDA graph as the decode step is; --sweep tries a grid of launch settings per shape.
- step: time per token of a batch-1 decode after a 4K prompt, the torch step and the fused Triton step
  (both CUDA graphs), against the bandwidth floor, and how far apart their logits are.

The JSON's env records the kernel tuning in force (kernel_tuning: model.backends.tuning_record()); each step
variant's DecodeTuning is under step.decode_tuning, each GEMV sweep's setting in its row.

    python benchmarks/decode_kernels.py [--preset andromeda] [--sweep] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

import model_speed as ms  # noqa: E402

from andromeda.measure import floors  # noqa: E402
from andromeda.measure.env import collect_env  # noqa: E402
from andromeda.measure.timing import TimingConfig, time_fn  # noqa: E402
from andromeda.model import fused_decode  # noqa: E402
from andromeda.model.backends import DecodeTuning, tuned, tuning, tuning_record  # noqa: E402
from andromeda.sources.models import build  # noqa: E402

STREAM_BYTES = 384 * 2**20
TIMING = TimingConfig(warmup=3, min_runs=20, max_runs=200, budget_s=1.0, target_rel_ci=0.01, cuda_graph=True)
SWEEP = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=1)
         for bn, bk, w in ((4, 1024, 4), (8, 1024, 4), (8, 1024, 8), (4, 512, 4), (8, 512, 4), (16, 512, 4),
                           (16, 256, 4), (32, 256, 4), (32, 256, 8))]  # the leaders of a wider sweep


def shapes(cfg) -> dict[str, tuple[list[int], int, bool]]:
    """name -> (row counts of the weights stacked in one launch, K, whether the step normalizes its input)."""
    h, hkv, d = cfg.heads, cfg.n_kv_heads, cfg.dim_head
    return {"qkv": ([h * d, hkv * d, hkv * d], cfg.dim, True), "out": ([cfg.dim], h * d, False),
            "w_in": ([cfg.ff_hidden], cfg.dim, True), "w_out": ([cfg.dim], cfg.ff_hidden, False),
            "lm_head": ([cfg.num_tokens], cfg.dim, True)}


class _Lin:  # what FusedStep._gemv reads from an nn.Linear
    def __init__(self, w):
        self.weight, self.bias = w, None


def gemv_row(name: str, ns: list[int], k: int, normed: bool, sweep: bool, pdl: bool) -> dict:
    """One shape: cuBLAS and our GEMV (the best of the sweep, or the default setting) in GB/s; with pdl, our
    launches overlap (programmatic dependent launch), as in the decode step. normed: ours also normalizes
    and token-shifts its input (LayerNorm, shift 1), as the step's GEMV of this shape does."""
    nbytes = sum(ns) * k * 2
    copies = max(2, -(-STREAM_BYTES // nbytes))
    ws = [[torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for n in ns] for _ in range(copies)]
    x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(sum(ns), device="cuda", dtype=torch.bfloat16)
    x3 = x.view(1, 1, k)
    norm = None
    if normed:
        ln = torch.nn.LayerNorm(k, device="cuda", dtype=torch.bfloat16)
        norm = fused_decode.Norm(ln, torch.zeros(1, 1, k, device="cuda", dtype=torch.bfloat16), torch.empty_like(x))

    def cublas():
        for wl in ws:
            for w in wl:
                F.linear(x3, w)

    def ours(use_pdl=pdl, prologue=norm):
        for wl in ws:
            fused_decode.gemv(x, out, [_Lin(w) for w in wl], norm=prologue, pdl=use_pdl)

    def gbps(fn):
        t = time_fn(fn, "cuda", TIMING)
        per = [s / copies for s in t.samples_ms]
        med = t.median_ms / copies
        return nbytes / (med / 1e3) / 1e9, (max(per) - min(per)) / med

    xin = x  # the shifted chunk (the second half) reads the zero state
    if norm is not None:
        xin = torch.cat([ln(x)[: k // 2], torch.zeros(k - k // 2, device="cuda", dtype=x.dtype)])
    ref = torch.cat([F.linear(xin, w) for w in ws[0]]).float()
    row = {"shape": name, "rows": sum(ns), "k": k, "mb": nbytes / 1e6, "norm_prologue": normed}
    row["cublas_gbps"], row["cublas_spread"] = gbps(cublas)
    best = None
    base = tuning(DecodeTuning)
    for c in SWEEP if sweep else [None]:
        with tuned(dataclasses.replace(base, gemv=c)):
            try:
                fused_decode.gemv(x, out, [_Lin(w) for w in ws[0]], norm=norm)
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                g, spread = gbps(ours)
            except Exception as e:  # noqa: BLE001 - a setting that cannot launch is skipped
                print(f"  {name} {c}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
                continue
            used = fused_decode.gemv_config(sum(ns), k, False, normed)
        if sweep:
            print(f"  {name} {used} {g:7.0f} GB/s", flush=True)
        if best is None or g > best[0]:
            best = (g, spread, used, err)
    row["triton_gbps"], row["triton_spread"], row["triton_config"], row["triton_max_rel_err"] = best
    if sweep:  # the default setting too
        row["default_config"] = fused_decode.gemv_config(sum(ns), k, False, normed)
        row["default_gbps"] = gbps(ours)[0]
    if pdl:  # the default setting with plain launches, for the PDL gain
        row["default_no_pdl_gbps"] = gbps(lambda: ours(False))[0]
    if normed:  # the same GEMV reading x as it is, for what the norm prologue costs
        row["no_norm_gbps"] = gbps(lambda: ours(prologue=None))[0]
    tag = name + ("+norm" if normed else "")
    print(f"gemv {tag:13s} {sum(ns):6d}x{k:<6d} {nbytes / 1e6:6.1f} MB  cuBLAS {row['cublas_gbps']:6.0f} GB/s  "
          f"triton {row['triton_gbps']:6.0f} GB/s  {row['triton_config']}", flush=True)
    return row


def gemv_rows(cfg, sweep: bool, pdl: bool) -> list[dict]:
    rows = []
    for name, (ns, k, normed) in shapes(cfg).items():
        rows.append(gemv_row(name, ns, k, normed, sweep, pdl))
        torch.cuda.empty_cache()
    return rows


def step_rows(bundle, bw: float) -> dict:
    from andromeda.model import GraphedDecoder

    model = bundle.model
    floor = ms.decode_floor_ms(bundle, bw)
    res = {"floor_ms": floor, "decode_tuning": {}}
    base = tuning(DecodeTuning)
    # the torch step; the fused step without PDL, with PDL but without streaming the out-projection (and w_in's
    # first tiles) during attention, and as it ships
    for name, mode, pdl, early in (("torch_graph", "cuda_graph", None, True),
                                   ("fused_graph_no_pdl", "fused_graph", False, True),
                                   ("fused_graph_no_early", "fused_graph", None, False),
                                   ("fused_graph", "fused_graph", None, True)):
        late = {} if early else dict(early_out=False, out_pre=1, early_in=False)
        with tuned(dataclasses.replace(base, pdl=pdl, **late)):
            t = ms.andromeda_tpot_ms(model, mode)
            res["decode_tuning"][name] = tuning_record()["fused_decode"]  # what this step ran with
        res[f"{name}_ms"], res[f"{name}_of_floor"] = t, floor / t
        print(f"step {name:20s} {t:7.3f} ms/token  {floor / t:6.1%} of the {floor:.3f} ms floor", flush=True)
    # the two steps' logits from the same prefilled state, against a float32 run of the same weights
    prompt = torch.randint(0, 256, (1, ms.PROMPT_CTX), device="cuda")
    tok = torch.randint(0, 256, (1, 1), device="cuda")
    logits = {}
    with torch.inference_mode():
        for kernels in ("torch", "triton"):
            cache = model.new_cache(1, ms.PROMPT_CTX + 2)
            model(prompt, cache=cache, logits="last")
            logits[kernels] = GraphedDecoder(model, cache, kernels=kernels).step(tok).float()
            del cache
        a, b = logits["torch"], logits["triton"]
        res["logits_max_rel_diff"] = ((a - b).abs().max() / a.abs().max()).item()
        res["argmax_equal"] = bool(torch.equal(a.argmax(-1), b.argmax(-1)))
    print(f"step logits: torch vs triton max rel diff {res['logits_max_rel_diff']:.2e}, "
          f"argmax equal {res['argmax_equal']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--sweep", action="store_true", help="try a grid of GEMV launch settings per shape")
    ap.add_argument("--no-step", action="store_true", help="GEMVs only")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_kernels.py: needs a CUDA GPU")
    fl = floors.measure("cuda")
    bw = fl["copy_gb_per_s"]
    print(f"floors: copy {bw:.0f} GB/s, bf16 matmul {fl['matmul_bf16_tflops']:.0f} TFLOP/s", flush=True)
    res = {"floors": fl, "env": collect_env()}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))

    torch.manual_seed(0)
    bundle = build(f"andromeda:{args.preset}", torch.device("cuda"), torch.bfloat16)
    pdl = torch.cuda.get_device_capability()[0] >= 9
    res["gemv"] = gemv_rows(bundle.model.cfg, args.sweep, pdl)
    save()
    if not args.no_step:
        res["step"] = step_rows(bundle, bw)
        save()


if __name__ == "__main__":
    main()
