"""Andromeda's attention on the GPU: our Triton kernel vs cuDNN SDPA and FlexAttention, side by side.

Shape: causal, 24 heads, head dim 128, bf16; Andromeda's own attention has 1 KV head and ALiBi on
12 of 24 heads (triton, flex); cuDNN and flash SDPA run plain causal MHA of the same shape (no ALiBi to
do), their K/V expanded to 24 heads once per measurement, outside the timed call.

Two rates per row:
- `effective_tflops`: the dense causal FLOPs (`dense_causal_flops`: forward 4*B*H*D*N(N+1)/2, forward+backward
  3.5x that) over the time, the same work counted for every implementation;
- `actual_tflops` (our kernel): the FLOPs of the tiles the kernel really computed (`computed_flops`, from its
  tile count in a separate untimed call: model.backends.block_count; whole tiles, masked entries of diagonal
  tiles included, and the backward's recomputation) over the same time: its arithmetic rate. The kernel
  skips, on ALiBi heads, key blocks too far back to count (under 2^-32 of a row's softmax sum), so its
  effective rate can exceed its actual one (and the datasheet peak); `computed_share` is computed over
  dense causal FLOPs. cuDNN, flash SDPA and FlexAttention report no tile count (they skip no causal pair):
  their effective rate is their pair-arithmetic rate.

Inputs: `random` (unit normal q, k, v: key norms ~sqrt(128)) or `model` (q, k, v as the `andromeda` preset's
first attention layer computes them at its positions: QK-norm, rotary/xPos, its own ALiBi slopes and
scale; random-initialized weights, so this is the model at initialization). Our kernel's skipping depends
on the key norms, so the two can differ; the others' time does not depend on the values.
Floors (same run): bf16 matmul rate and copy bandwidth, beside the datasheet's; the JSON leads with the
git commit, device and versions (andromeda.measure.floors.provenance); its env holds the kernel tuning the rows
ran with (kernel_tuning: model.backends.tuning_record()), except the --configs sweeps' launch settings, which
their rows name.

    python benchmarks/attention_kernels.py [--lengths 2048,8192,32768] [--tokens 32768] [--inputs random,model]
                                           [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F

from andromeda.measure import floors as bench_floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import TimingConfig, time_fn
from andromeda.model.backends import TritonTuning, get, tuned, tuning
from andromeda.model.backends.block_count import count_blocks
from andromeda.model.positional import head_slopes

H, HKV, D, ALIBI_HEADS = 24, 1, 128, 12


def cfg(bm: int, bn: int, warps: int, stages: int, tma: bool = True, ws: bool = False) -> dict:
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, TMA=tma, WS=ws)


# launch settings tried by --configs (the backward's dQ kernel takes the dK/dV blocks transposed)
FWD_CONFIGS = [cfg(128, 128, 8, 3), cfg(128, 128, 8, 3, ws=True), cfg(128, 64, 8, 3), cfg(128, 64, 8, 3, ws=True),
               cfg(128, 128, 8, 3, tma=False), cfg(64, 64, 4, 3), cfg(128, 128, 4, 3, ws=True),
               cfg(128, 128, 8, 2, ws=True)]
BWD_CONFIGS = [cfg(64, 64, 4, 2), cfg(64, 64, 4, 3), cfg(32, 128, 4, 3), cfg(32, 128, 4, 2), cfg(32, 128, 8, 3),
               cfg(64, 128, 8, 2), cfg(32, 64, 4, 3), cfg(64, 128, 4, 2)]


def flops(b: int, n: int) -> float:
    """Dense causal forward FLOPs: q @ k^T and p @ v over every (query, earlier-or-same key) pair, all H heads."""
    return 4.0 * b * H * D * n * (n + 1) / 2


def make(b: int, n: int):
    g = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(b, H, n, D, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(b, HKV, n, D, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(b, HKV, n, D, device="cuda", generator=g, dtype=torch.bfloat16)
    return q, k, v


def expand_kv(q, k, v):
    """Plain MHA inputs from MQA ones: K and V copied to all H heads (contiguous), q as it is."""
    return q, k.expand(-1, H, -1, -1).contiguous(), v.expand(-1, H, -1, -1).contiguous()


class _Captured(Exception):
    """Raised by the capturing backend to stop the model's forward once layer 0's attention inputs exist."""


def model_source(n: int, preset: str = "andromeda") -> str:
    """The model source speed_targets times: room for n tokens, xPos interpolated by 2 (32K within range)."""
    return f"andromeda:{preset}?max_seq_len={max(n + 1024, 33792)}&pos_interpolation_factor=2"


def model_inputs(b: int, n: int, preset: str = "andromeda", layer: int = 0, device: str = "cuda"):
    """(q, k, v, slopes, scale) as the preset's attention `layer` computes them for b x n random tokens
    (random-initialized weights): q (b, heads, n, dim_head), k and v (b, kv_heads, n, dim_head)."""
    from andromeda.sources.models import build

    torch.manual_seed(n)
    bundle = build(model_source(n, preset), torch.device(device), torch.bfloat16)
    model, got = bundle.model, {}
    attn = model.blocks[layer].attn

    def capture(q, k, v, *, causal, scale, alibi_slopes):
        got.update(q=q, k=k, v=v, slopes=alibi_slopes, scale=scale)
        raise _Captured

    attn.backend = lambda device, dtype: capture
    tokens = torch.randint(0, model.cfg.num_tokens, (b, n), device=device)
    try:
        with torch.no_grad():
            model(tokens)
    except _Captured:
        pass
    q, k, v = (got[x].contiguous() for x in "qkv")
    del bundle, model
    if q.shape[2] != n:  # the model attended the first of several calls (Attention._attend)
        raise ValueError(f"--inputs model: at {n} tokens the model's attention is one call per xPos anchor block "
                         f"({q.shape[2]} positions here), not one call of {n}; use --inputs random at this length")
    if device == "cuda":
        torch.cuda.empty_cache()
    return q, k, v, got["slopes"], got["scale"]


def impls(device: str = "cuda", slopes: torch.Tensor | None = None, scale: float | None = None):
    """name -> attention call (q, k, v) -> out. A call with a `prepare` attribute takes its inputs through it
    once, before timing (measure, accuracy): the SDPA baselines' K/V expansion is not part of their time.
    slopes, scale: ALiBi slopes and softmax scale (default: ALiBi on the first 12 heads, D^-0.5)."""
    slopes = head_slopes(H, ALIBI_HEADS).to(device) if slopes is None else slopes
    scale = D**-0.5 if scale is None else scale
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn(q, k, v):  # (B, H, N, D) each: MHA, expanded by prepare
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def flash_sdpa(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    cudnn.prepare = flash_sdpa.prepare = expand_kv

    return {
        "triton (ALiBi, MQA)": lambda q, k, v: get("triton")(q, k, v, causal=True, scale=scale, alibi_slopes=slopes),
        "flex (ALiBi, MQA)": lambda q, k, v: get("flex")(q, k, v, causal=True, scale=scale, alibi_slopes=slopes),
        "cuDNN SDPA (plain causal MHA)": cudnn,
        "flash SDPA (plain causal MHA)": flash_sdpa,
    }


def inputs(fn, b: int, n: int, qkv=None):
    """q, k, v for `fn` (make(), or the given qkv, then fn.prepare where it has one), as leaf tensors."""
    q, k, v = make(b, n) if qkv is None else (t.detach() for t in qkv)
    prepare = getattr(fn, "prepare", None)
    return (q, k, v) if prepare is None else prepare(q, k, v)


def measure(fn, b, n, backward: bool, qkv=None):
    """Median time of fn forward (or forward+backward) on b x n, its effective rate and, for a kernel that
    reports its tiles (ours), the FLOPs it computed and its actual rate."""
    q, k, v = inputs(fn, b, n, qkv)
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        grad = torch.randn(b, H, n, D, device="cuda", dtype=torch.bfloat16)

        def run():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad)
    else:

        def run():
            with torch.no_grad():
                fn(q, k, v)

    cfg = TimingConfig(warmup=3, min_runs=10, max_runs=100, budget_s=3.0, target_rel_ci=0.01)
    t = time_fn(run, "cuda", cfg)
    work = flops(b, n) * (3.5 if backward else 1.0)
    seconds = t.median_ms / 1e3
    out = {"ms": t.median_ms, "cv": t.summary.cv, "dense_causal_flops": work, "effective_tflops": work / seconds / 1e12}
    with count_blocks() as count:  # untimed: the same call, its kernels adding up the tiles they compute
        run()
    torch.cuda.synchronize()
    if count.parts:
        computed = sum(count.flops().values())
        out.update(computed_flops=computed, actual_tflops=computed / seconds / 1e12, computed_share=computed / work,
                   computed_tiles=count.tiles())
    return out


def accuracy(fn, n=2048):
    q, k, v = inputs(fn, 1, n)
    slopes = head_slopes(H, ALIBI_HEADS).cuda()
    ref = get("eager")(q.float(), k.float(), v.float(), causal=True, scale=D**-0.5, alibi_slopes=slopes)
    out = fn(q, k, v).float()
    return ((out - ref).norm() / ref.norm()).item()


def config_sweep(fn, which: str, configs, lengths=(8192,)) -> list[dict]:
    """Time the Triton kernel with each launch setting for "fwd" or "bwd" (32K tokens per length: batch 4 at 8K,
    1 at 32K)."""
    out = []
    base = tuning(TritonTuning)
    for c in configs:
        setting = {k: v for k, v in c.items() if which == "fwd" or k != "WS"}
        with tuned(dataclasses.replace(base, config_override={**base.config_override, which: setting})):
            for n in lengths:
                try:
                    r = measure(fn, max(1, 32768 // n), n, backward=which == "bwd")
                except Exception as e:  # noqa: BLE001 - a config that fails to compile is a result
                    r = {"error": str(e).splitlines()[0][:120]}
                out.append({**c, "n": n, **r})
                print(which, out[-1], flush=True)
                torch.cuda.empty_cache()
    return out


def floors():
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ a, warmup=50, rep=300, return_mode="median")
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms_c = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return {"matmul_bf16_tflops": 2 * 8192**3 / (ms / 1e3) / 1e12, "copy_gb_per_s": 2 * src.nbytes / (ms_c / 1e3) / 1e9,
            **bench_floors.datasheet(torch.cuda.get_device_name())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--tokens", type=int, default=32768, help="batch = tokens // length")
    ap.add_argument("--configs", action="store_true", help="also sweep Triton block configs (fwd 8K/32K, bwd 8K)")
    ap.add_argument("--inputs", default="random", help="random, model, or both (comma-separated); see the docstring")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    table = impls()
    for name in ("triton (ALiBi, MQA)", "flex (ALiBi, MQA)"):
        rows.append({"impl": name, "rel_err_vs_fp32_eager_2k": accuracy(table[name])})
    for n in (int(x) for x in args.lengths.split(",")):
        b = max(1, args.tokens // n)
        for source in args.inputs.split(","):
            qkv, fns = None, table
            if source == "model":
                try:
                    *qkv, slopes, scale = model_inputs(b, n)
                except ValueError as e:
                    rows.append({"impl": "all", "inputs": source, "n": n, "batch": b, "pass": "-", "error": str(e)})
                    print(rows[-1], flush=True)
                    continue
                fns = impls(slopes=slopes, scale=scale)
            for name, fn in fns.items():
                for backward in (False, True):
                    try:
                        r = measure(fn, b, n, backward, qkv)
                    except Exception as e:  # noqa: BLE001 - report and go on
                        r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                    rows.append({"impl": name, "inputs": source, "n": n, "batch": b,
                                 "pass": "fwd+bwd" if backward else "fwd", **r})
                    print(rows[-1], flush=True)
                    torch.cuda.empty_cache()
    sweep, bwd_sweep = [], []
    if args.configs:
        fn = table["triton (ALiBi, MQA)"]
        sweep = config_sweep(fn, "fwd", FWD_CONFIGS, lengths=(8192, 32768))
        bwd_sweep = config_sweep(fn, "bwd", BWD_CONFIGS)
    fl = floors()
    res = {**bench_floors.provenance(collect_env(), fl), "rows": rows, "fwd_config_sweep": sweep,
           "fwd_bwd_config_sweep_8k": bwd_sweep, **fl}
    print(f"floors ({fl['device']}): matmul {fl['matmul_bf16_tflops']:.0f} TFLOP/s "
          f"(datasheet {fl['datasheet_bf16_tflops']}), copy {fl['copy_gb_per_s']:.0f} GB/s "
          f"(datasheet {fl['datasheet_gb_per_s']})")
    print("effective TFLOP/s: dense causal FLOPs over time; actual: FLOPs of the tiles computed over time (ours only)")
    print(f"{'impl':32s} {'inputs':>6s} {'N':>6s} {'pass':>8s} {'ms':>9s} {'eff TF/s':>8s} {'act TF/s':>8s} "
          f"{'CV':>6s}")
    for r in rows:
        if "n" in r and "ms" in r:
            act = f"{r['actual_tflops']:8.1f}" if "actual_tflops" in r else f"{'-':>8s}"
            print(f"{r['impl']:32s} {r['inputs']:>6s} {r['n']:6d} {r['pass']:>8s} {r['ms']:9.3f} "
                  f"{r['effective_tflops']:8.1f} {act} {r['cv']:6.3f}")
        elif "n" in r:
            print(f"{r['impl']:32s} {r['inputs']:>6s} {r['n']:6d} {r['pass']:>8s} {r['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
