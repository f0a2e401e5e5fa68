"""Context-parallel prefill over the GPUs of one host (model/context_parallel.py): latency against sequence
length and GPU count, with the communication share, per-rank balance and scaling efficiency (issue: past one
GPU; the spec's "32,000+ tokens in < 100 ms").

    torchrun --nproc_per_node 8 benchmarks/context_parallel.py --json cp-8.json [--lengths 8192 32768 131072]
    torchrun --nproc_per_node 2 benchmarks/context_parallel.py --smoke --json /tmp/cp.json   # CPU, gloo

Per length, on every rank (the same weights and tokens): warm-up, then --reps prefills of the whole sequence
(logits for the last position only), each between barriers and synchronized; the latency is the slowest
rank's, the median over reps. One more prefill with each all-gather synchronized and timed gives each rank's
communication time (the share of its prefill time; that run is not in the latency). Rank 0 also runs the
single-device forward of the same tokens (in the same process, the other ranks waiting) for the scaling
efficiency T1 / (N x TN); at lengths where one device runs out of memory it is left out. Rank 0 writes the
JSON.

Beside it, on CUDA when transformers is installed (--no-torch-cp to skip): PyTorch's own context parallelism,
`torch.distributed.tensor.experimental.context_parallel` (SDPA's flash kernel in a ring: K/V shards passed rank
to rank, --cp-rotate alltoall, or all-gathered, allgather; head-tail load balancing, its default for causal
attention), on the plain Llama that does the same work as the preset (hf:matched:<preset>: the same shape and
one KV head, the FFN width matching parameters and FLOPs per token within 2%), with the same N, lengths and
tokens and the same timing: each row's "torch_cp" and "speedup_vs_torch_cp" (its latency over ours). PyTorch's
context_parallel shards SDPA's CUDA kernels only (on the CPU, aten._scaled_dot_product_flash_attention_for_cpu
has no sharding strategy), so --smoke records why it did not run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import Stopwatch
from andromeda.model import Andromeda, from_name
from andromeda.model.context_parallel import layout, prefill


def _timed(fn, device: torch.device) -> float:
    """Seconds of fn() on every rank, between barriers, synchronized; the slowest rank's."""
    dist.barrier()
    with Stopwatch(device) as sw:
        fn()
    t = torch.tensor([sw.elapsed_s], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _per_rank(value: float) -> list[float]:
    out = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64))
    return [float(t) for t in out]


def row(model, n: int, reps: int, device: torch.device, single: bool) -> dict:
    world = dist.get_world_size()
    tokens = torch.randint(0, model.cfg.num_tokens, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
    prefill(model, tokens)  # warm-up: kernels, allocator
    runs = sorted(_timed(lambda: prefill(model, tokens), device) for _ in range(reps))
    stats: dict = {}
    dist.barrier()
    with Stopwatch(device) as sw:
        prefill(model, tokens, stats=stats)
    totals, comms = _per_rank(sw.elapsed_s), _per_rank(stats["comm_s"])
    r = {"n": n, "world": world, "prefill_ms": 1e3 * runs[len(runs) // 2], "prefill_ms_runs": [1e3 * t for t in runs],
         "rank_ms_timed_run": [1e3 * t for t in totals], "rank_comm_ms": [1e3 * t for t in comms],
         "comm_share": max(c / t for c, t in zip(comms, totals, strict=True)),
         "balance_max_over_min": max(t - c for c, t in zip(comms, totals, strict=True))
         / min(t - c for c, t in zip(comms, totals, strict=True)),
         "chunks": layout(n, world, model.cfg.shift_tokens)}
    if single:
        def forward():
            with torch.no_grad():
                model(tokens, logits="last")

        _add_single_device(r, forward, device, world, runs[len(runs) // 2])
    return r


def _add_single_device(r: dict, prefill, device, world: int, sharded_s: float) -> None:
    """Rank 0 times `prefill` alone on its device (after one untimed call) while the others wait; r gets
    single_device_ms and scaling_efficiency T(1) / (world T(world)) unless it ran out of memory."""
    one = None
    if dist.get_rank() == 0:
        try:
            prefill()
            with Stopwatch(device) as sw:
                prefill()
            one = sw.elapsed_s
        except torch.OutOfMemoryError:
            one = None
    dist.barrier()
    if one is not None:
        r["single_device_ms"] = 1e3 * one
        r["scaling_efficiency"] = one / (world * sharded_s)


# ---- PyTorch's context_parallel on a Llama of matched work ----------------------------------------------
CPU_REASON = ("PyTorch's context_parallel shards SDPA's CUDA kernels (flash, efficient, cuDNN) only: on the CPU, "
              "aten._scaled_dot_product_flash_attention_for_cpu has no sharding strategy; the comparison runs on "
              "CUDA (NCCL)")


def torch_cp_unavailable(device: torch.device, want: bool | None) -> str | None:
    """Why the PyTorch context_parallel comparison does not run here, or None."""
    if want is False:
        return "not asked for (--no-torch-cp)"
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed: pip install 'andromeda[hf]'"
    if device.type != "cuda":
        return CPU_REASON
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.tensor.experimental.context_parallel"
    return None


def matched_llama(preset: str, max_len: int, device: torch.device, dtype: torch.dtype):
    """The suite's hf:matched:<preset> Llama (SDPA) with positions up to max_len, built on `device` from the seed
    set before (the same weights on every rank)."""
    from andromeda.sources import models

    with torch.device(device):
        return models.build(f"hf:matched:{preset}?max_seq_len={max_len}", device, dtype)


@contextlib.contextmanager
def repeated_kv(on: bool):
    """With on: transformers repeats the Llama's one K/V head for every query head before SDPA (as torchtitan's
    models do) instead of passing enable_gqa=True, for an SDPA whose grouped-query path context_parallel does not
    shard."""
    if not on:
        yield
        return
    from transformers.integrations import sdpa_attention

    saved = sdpa_attention.use_gqa_in_sdpa
    sdpa_attention.use_gqa_in_sdpa = lambda *a, **k: False
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = saved


def llama_prefill(model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The Llama's logits for its last position (B, 1, V). The all-ones mask keeps transformers from reading a jump in
    position_ids (context_parallel's head-tail shard) as packed sequences: SDPA then gets no mask and is_causal=True,
    which the ring needs."""
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids), use_cache=False,
                     logits_to_keep=1).logits


def torch_cp_prefill(model, mesh, tokens: torch.Tensor) -> torch.Tensor:
    """One prefill of tokens (B, N), the same on every rank, under context_parallel: the ids and positions are
    sharded (head-tail) on entry and SDPA runs as ring attention."""
    from torch.distributed.tensor.experimental import context_parallel

    ids = tokens.clone()
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens).clone()
    with context_parallel(mesh, buffers=[ids, pos], buffer_seq_dims=[1, 1], no_restore_buffers={ids, pos}):
        return llama_prefill(model, ids, pos)


def torch_row(llama, tokens: torch.Tensor, reps: int, device: torch.device, single: bool, mesh) -> dict:
    """The Llama under PyTorch's context_parallel, timed as row() times ours; an error is recorded, not raised."""
    world = dist.get_world_size()
    try:
        torch_cp_prefill(llama, mesh, tokens)  # warm-up
        runs = sorted(_timed(lambda: torch_cp_prefill(llama, mesh, tokens), device) for _ in range(reps))
    except Exception as e:  # noqa: BLE001 - a prototype API: say what failed, keep our rows
        dist.barrier()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]}
    r = {"prefill_ms": 1e3 * runs[len(runs) // 2], "prefill_ms_runs": [1e3 * t for t in runs]}
    if single:
        pos = torch.arange(tokens.shape[1], device=device).expand_as(tokens)
        _add_single_device(r, lambda: llama_prefill(llama, tokens, pos), device, world, runs[len(runs) // 2])
    return r


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-single", action="store_true", help="skip the single-device forward on rank 0")
    ap.add_argument("--smoke", action="store_true", help="CPU and gloo: the tiny preset, short lengths")
    ap.add_argument("--torch-cp", action=argparse.BooleanOptionalAction, default=None,
                    help="PyTorch's context_parallel on hf:matched:<preset> beside ours (default: on CUDA when "
                         "transformers is installed)")
    ap.add_argument("--cp-rotate", choices=["alltoall", "allgather"], default="alltoall",
                    help="how PyTorch's context_parallel moves K/V shards: alltoall (the ring) or allgather")
    ap.add_argument("--cp-repeat-kv", action="store_true",
                    help="the Llama repeats its K/V head per query head before SDPA (no enable_gqa)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    dist.init_process_group("gloo" if smoke else "nccl")
    rank = dist.get_rank()
    device = torch.device("cpu") if smoke else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    lengths = [128, 256] if args.smoke else args.lengths
    preset = "tiny" if smoke else args.preset
    dtype = torch.float32 if smoke else torch.bfloat16
    cfg = from_name(preset, max_seq_len=max(lengths))
    torch.manual_seed(0)
    with torch.device(device):
        model = Andromeda(cfg).to(dtype).eval()
    fl = None if smoke or rank else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": {**vars(args), "json": str(args.json)}, "rows": []}
    llama = mesh = None
    why = torch_cp_unavailable(device, args.torch_cp)
    if why is None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental._attention import set_rotate_method  # torch >= 2.5

        torch.manual_seed(0)
        llama = matched_llama(preset, max(lengths), device, dtype)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        set_rotate_method(args.cp_rotate)
        res["torch_cp"] = {"source": llama.source, "matched": llama.info.get("matched"), "rotate": args.cp_rotate,
                           "gqa": "K/V repeated per query head" if args.cp_repeat_kv else "SDPA enable_gqa",
                           "load_balance": "head-tail (context_parallel's default for causal SDPA)",
                           "params": llama.facts.params, "andromeda_params": sum(p.numel() for p in model.parameters())}
    else:
        res["torch_cp"] = {"skipped": why}
    for n in lengths:
        r = row(model, n, 2 if smoke else args.reps, device, not args.no_single)
        if llama is not None:
            tokens = torch.randint(0, cfg.num_tokens, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
            with repeated_kv(args.cp_repeat_kv):
                r["torch_cp"] = torch_row(llama.model, tokens, args.reps, device, not args.no_single, mesh)
            if "prefill_ms" in r["torch_cp"]:
                r["speedup_vs_torch_cp"] = r["torch_cp"]["prefill_ms"] / r["prefill_ms"]
        res["rows"].append(r)
        if rank == 0:
            args.json.write_text(json.dumps(res, indent=1, default=str))
            vs = f", PyTorch context_parallel (Llama) {r['torch_cp'].get('prefill_ms', float('nan')):.1f} ms" \
                if "torch_cp" in r else ""
            print(f"N={n} on {r['world']} ranks: {r['prefill_ms']:.1f} ms, communication {r['comm_share']:.1%}, "
                  f"balance {r['balance_max_over_min']:.2f}, scaling efficiency "
                  f"{r.get('scaling_efficiency', float('nan')):.1%}{vs}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
