"""Context-parallel prefill latency on W = 1, 2, 4, 8 GPUs, projected from one GPU (issue 27: "32,768 tokens in
< 100 ms on 8 GPUs with context parallelism"; multi-GPU hosts are not at hand, benchmarks/context_parallel.py
measures it where they are).

    python benchmarks/cp_projection.py --json cp-proj.json --lengths 32768 65536 [--graphs]
    python benchmarks/cp_projection.py --smoke --json /tmp/cp-proj.json   # CPU check: tiny preset, float32

Method. The context-parallel prefill (model/context_parallel.py) gives rank r the chunks r and 2W - 1 - r of
`layout(n, W, shift_tokens)` and runs both together, one call of each block for the two: per layer, a
chunk [a, b)'s queries attend the all-gathered keys of positions 0 .. b - 1, and its token shift takes the rows
of position a - 1. Per chunk that is exactly the work of a chunked prefill through a KV cache:
`model(tokens[:, a:b], cache=cache, logits=...)` with the cache holding positions [0, a) (token-shift state of
position a - 1 included); logits for the last position on the chunk that ends at n, none on the others (as
prefill(logits="last")). Per (n, W) the script fills a bf16 cache once, chunk by chunk along the layout's
edges, keeping a snapshot at each edge (length, token-shift rows), and times each chunk [a, b) with the cache
rewound to its snapshot at a: one untimed run, then the median of --reps synchronized runs (Stopwatch). A
rank's compute is the sum of its two chunks. Single device: the median of `model(tokens, logits="last")`, the
scaling efficiency T1 / (W x TW). --graphs (CUDA): each chunk is also captured in a CUDA graph and replayed,
its GPU time without the host's kernel launches (fields *_graphed): on the H200, eager 2K-token chunks took
46 - 110 ms against ~39 ms for the same tokens inside one 32K prefill, which points at launch overhead; the
graphed times say how much.

The projection (every figure in the JSON; the assumptions as strings under "assumptions"):
- communication: per layer the implementation makes one all-gather per exchange, covering both of a rank's
  chunks: keys and values (B, H_kv, rows, dim_head, model dtype), the keys' float32 norms (B, H_kv, rows) where
  the attention backend takes them (xPos + ALiBi + a backend with score_norms: our Triton kernel, not the CPU's
  eager one), and per token-shift site (2 a block, 1 for parallel blocks) the last `shift_tokens` rows of
  width dim of each chunk (2 x shift_tokens rows). rows = max over ranks of the positions a rank holds (its
  two chunks; every rank pads to the largest). So depth x (2 + norms + sites) all-gathers a rank for the whole
  prefill, each of W x the rows above. The script counts the cache calls that _Shards answers with all-gathers
  while it fills the cache and refuses to project when they differ from the formula. Each all-gather costs
  alpha + (W - 1)/W x output bytes / busbw (nccl-tests' bus bandwidth of all_gather), alpha 20 us, busbw
  360 GB/s (--alpha-us, --busbw-gbs). W = 1: none. No overlap (the implementation synchronizes each
  collective between the blocks' kernels).
- projected_ms: max over ranks of (its two chunks' compute) + communication. Every all-gather waits for the
  rank with the most work, and each rank's work between two all-gathers is both its chunks', which the layout
  balances; the layers are alike, so the slowest rank's total sets the pace (a lower bound where different
  ranks are slowest between different all-gathers of a layer, e.g. one in attention and another in the FFN).
- lockstep_compute_ms: recorded for comparison with earlier results, not a projection of the current code:
  the previous implementation (before commit 636eebd) gathered each piece (every rank's first chunk, then
  every rank's second) per layer, so it paid sum over the two pieces of max over ranks of the chunk's time.
- the ranks' GPUs run as this one; the copies of gathered rows into the full-length buffers are not timed;
  a rank's two chunks are timed as two cache calls where the implementation runs them in one (half the kernel
  launches), so eager times count the host's launch overhead twice; --graphs times leave it out.
A correctness check per length, for the smallest W > 1: the chunks' last hidden states, run through the rewound
cache, against the single forward's (max abs difference, recorded, not asserted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from andromeda.errors import ConfigError
from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import Stopwatch
from andromeda.model import Andromeda, from_name
from andromeda.model.context_parallel import layout

TARGET_MS = 100.0
ASSUMPTIONS = {
    "all_gather_cost": "alpha + (W - 1) / W x output bytes / busbw: nccl-tests' bus bandwidth of all_gather "
                       "(busbw = algbw x (n - 1) / n, algbw = output bytes / time; nccl-tests doc/PERFORMANCE.md)",
    "busbw": "default 360 GB/s: H100 SXM NVLink 4 moves 450 GB/s per direction (900 GB/s total, NVIDIA H100 "
             "datasheet); nccl-tests all_gather reaches about 80% of it for large messages on 8 GPUs",
    "alpha": "default 20 us a collective: a small-message NCCL all_gather on one NVLink/NVSwitch host (an "
             "assumption; --alpha-us)",
    "no_overlap": "communication is not overlapped with compute: the implementation runs each all-gather "
                  "synchronously between the blocks' kernels",
    "world_1": "W = 1: no communication modelled (one rank's all_gather is a local copy)",
    "collectives": "one all-gather per layer and exchange (k, v, key norms where gathered, each token-shift "
                   "site) for both of a rank's chunks at once: depth x (2 + norms + sites) a rank; k/v/norms of "
                   "max over ranks of (n0 + n1) rows from each rank, 2 x shift_tokens rows a shift site",
    "projection": "projected_ms: max over ranks of (its two chunks' compute) + comm: both chunks go through each "
                  "block in one call, so each all-gather waits for the rank with the most work (the layout "
                  "balances it); a lower bound where different ranks are slowest between a layer's all-gathers",
    "lockstep_compute_ms": "the previous implementation's compute (before 636eebd: one all-gather per chunk, "
                           "ranks in lockstep per piece): sum over the two pieces of max over ranks of the chunk "
                           "time; recorded for comparison with earlier results, not a projection",
    "same_gpus": "every rank's GPU runs its chunks as this GPU ran them (same clocks, no contention)",
    "two_calls": "a rank's compute is its two chunks timed as two cache calls; the implementation runs them in one "
                 "call a block (half the kernel launches), so eager times count launch overhead twice",
    "untimed": "the copies of gathered rows into full-length key/value buffers (_Shards._place) and the padding "
               "to the rank holding the most positions are not timed (a few MB a layer)",
}


def collective_count(cfg, key_norms: bool) -> dict:
    """All-gathers a rank makes per layer in a context-parallel prefill, by kind (as _Shards): one per exchange,
    each covering both of the rank's chunks."""
    sites = 0 if not cfg.shift_tokens else 1 if cfg.parallel_block else 2
    return {"kv": 2, "key_norms": int(key_norms), "shift": sites}


def comm_model(cfg, pieces, batch: int, elt: int, key_norms: bool, alpha_s: float, busbw: float) -> dict:
    """Modelled all-gathers of one rank (the same on every rank) for the layout `pieces`, the whole prefill:
    count, output bytes, seconds. Each rank sends both its chunks' rows at once, padded to the rank holding the
    most positions (k, v, norms), and the last shift_tokens rows of each of its two chunks (a shift site)."""
    w = len(pieces)
    if w == 1:
        return {"collectives": 0, "out_bytes": 0, "ms": 0.0}
    per = collective_count(cfg, key_norms)
    rows = max(sum(b - a for a, b in p) for p in pieces)
    layer = (per["kv"] * w * rows * batch * cfg.n_kv_heads * cfg.dim_head * elt
             + per["key_norms"] * w * rows * batch * cfg.n_kv_heads * 4
             + per["shift"] * w * 2 * cfg.shift_tokens * batch * cfg.dim * elt)
    out_bytes = cfg.depth * layer
    count = cfg.depth * sum(per.values())
    seconds = count * alpha_s + (w - 1) / w * out_bytes / busbw
    return {"collectives": count, "out_bytes": out_bytes, "ms": 1e3 * seconds}


class _Counting:
    """A KVCache that counts the calls a context-parallel prefill's _Shards answers with all-gathers (update: k
    and v, key_norms, shift_state where _Shards has shift_exchange), made here by one chunk's forward."""

    def __init__(self, cache):
        self._cache = cache
        self.counts = {"kv": 0, "key_norms": 0, "shift": 0}

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def update(self, layer, k, v):
        self.counts["kv"] += 2
        return self._cache.update(layer, k, v)

    def key_norms(self, layer, norms):
        self.counts["key_norms"] += 1
        return self._cache.key_norms(layer, norms)

    def shift_state(self, layer, site):
        self.counts["shift"] += 1
        return self._cache.shift_state(layer, site)


def _snapshot(cache, depth: int) -> tuple:
    """What a cache holding [0, length) needs to continue: its length and token-shift rows."""
    shift = {(i, s): st.clone() for i in range(depth) for s in ("attn", "ff")
             if (st := cache.shift_state(i, s)) is not None}
    return cache.length, shift


def _rewind(cache, snap: tuple) -> None:
    """Back to a snapshot: later keys, values and norms are overwritten before they are read."""
    length, shift = snap
    cache.rewind(length)
    for (i, site), st in shift.items():
        cache.set_shift_state(i, site, st)
    if length == 0:  # before position 0 the shift reads zeros
        cache.reset()


def _chunk(model, tokens, cache, a: int, b: int):
    return model(tokens[:, a:b], cache=cache, logits="last" if b == tokens.shape[1] else "none")


@torch.no_grad()
def _fill(model, tokens, pieces) -> tuple:
    """A cache filled along the layout's edges: (cache, {edge: snapshot}, calls counted per chunk)."""
    n, depth = tokens.shape[1], model.cfg.depth
    edges = sorted({a for p in pieces for a, _ in p} | {n})
    cache = model.new_cache(tokens.shape[0], n)
    snaps, counts = {}, []
    for a, b in zip(edges, edges[1:], strict=False):
        snaps[a] = _snapshot(cache, depth)
        counting = _Counting(cache)
        _chunk(model, tokens, counting, a, b)
        counts.append(counting.counts)
    return cache, snaps, counts


@torch.no_grad()
def _time_chunk(model, tokens, cache, snap, a: int, b: int, reps: int, device) -> list[float]:
    _rewind(cache, snap)
    _chunk(model, tokens, cache, a, b)  # warm-up: kernels for this shape
    runs = []
    for _ in range(reps):
        _rewind(cache, snap)
        with Stopwatch(device) as sw:
            _chunk(model, tokens, cache, a, b)
        runs.append(sw.elapsed_ms)
    return runs


@torch.no_grad()
def _time_chunk_graphed(model, tokens, cache, snap, a: int, b: int, reps: int, device) -> list[float] | str:
    """The chunk's prefill captured in a CUDA graph and replayed (after the eager timing warmed its kernels):
    its GPU time without the host's launch overhead. The cache is rewound before each replay (the shift rows
    are restored in place, outside the graph). Returns why when capture fails. Warm-up: the eager timing's."""
    _rewind(cache, snap)
    graph = torch.cuda.CUDAGraph()
    runs: list[float] | str = []
    try:
        with torch.cuda.graph(graph):
            _chunk(model, tokens, cache, a, b)
    except Exception as e:  # noqa: BLE001 - the eager numbers stand; the row says why there are no graphed ones
        runs = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    else:
        for _ in range(reps):
            _rewind(cache, snap)
            with Stopwatch(device) as sw:
                graph.replay()
            runs.append(sw.elapsed_ms)
    del graph
    _rewind(cache, snap)
    _chunk(model, tokens, cache, a, b)  # eagerly once more: the cache's length and key-norm count at b (replays
    return runs                         # and a failed capture leave them elsewhere; the next chunk rewinds to b)


def _projection(chunk_ms: list[list[float]], comm_ms: float, single_ms: float | None, world: int,
                suffix: str = "") -> dict:
    """Per-rank compute, balance, and the projection from the chunks' times: the slowest rank's two chunks plus
    communication (module doc). lockstep_compute_ms: the previous implementation's compute, for comparison."""
    compute = [sum(c) for c in chunk_ms]
    proj = max(compute) + comm_ms
    r = {"rank_chunk_ms": chunk_ms, "rank_compute_ms": compute, "compute_ms_max": max(compute),
         "balance_max_over_min": max(compute) / min(compute),
         "lockstep_compute_ms": sum(max(c[j] for c in chunk_ms) for j in range(2)), "projected_ms": proj,
         "scaling_efficiency": None if single_ms is None else single_ms / (world * proj),
         f"under_{TARGET_MS:.0f}ms": proj < TARGET_MS}
    return {k + suffix: v for k, v in r.items()}


@torch.no_grad()
def _check(model, tokens, cache, snaps, pieces, ref) -> dict:
    """The chunks' last hidden states through the rewound cache against the single forward's."""
    out = torch.empty_like(ref)
    for a, b in sorted(sum(pieces, [])):  # in position order, as row times them
        _rewind(cache, snaps[a])
        out[:, a:b] = model(tokens[:, a:b], cache=cache, logits="none")
    return {"world": len(pieces), "hidden_max_abs_diff": float((out.float() - ref.float()).abs().max()),
            "hidden_max_abs": float(ref.float().abs().max())}


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


@torch.no_grad()
def _single(model, tokens, reps: int, device) -> float | None:
    """Median ms of the single-device prefill model(tokens, logits="last"), None when it runs out of memory."""
    try:
        model(tokens, logits="last")
        runs = []
        for _ in range(reps):
            with Stopwatch(device) as sw:
                model(tokens, logits="last")
            runs.append(sw.elapsed_ms)
    except torch.OutOfMemoryError:
        _empty_cache()
        return None
    return _median(runs)


def _empty_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def row(model, tokens, world: int, reps: int, device, key_norms: bool, alpha_s: float, busbw: float,
        single_ms: float | None, ref=None, graphs: bool = False) -> dict:
    cfg, n = model.cfg, tokens.shape[1]
    pieces = layout(n, world, cfg.shift_tokens)
    cache, snaps, counts = _fill(model, tokens, pieces)
    # Like with like: a chunk's forward through the cache calls update / key_norms / shift_state once per layer,
    # where _Shards all-gathers; the prefill runs both chunks in one call a block, which makes the same calls
    # once per layer for both. So each chunk's count is the rank's whole count (not one of two halves).
    want = {k: cfg.depth * v for k, v in collective_count(cfg, key_norms).items()}
    if any(c != want for c in counts):
        raise RuntimeError(f"cp_projection: a chunk's cache calls {counts[0]} differ from the collective count "
                           f"{want}: the communication model no longer mirrors context_parallel._Shards")
    # in position order: each chunk leaves the cache at its end, the next chunk's start (rewind goes back only)
    timed = {c: _time_chunk(model, tokens, cache, snaps[c[0]], *c, reps, device) for c in sorted(sum(pieces, []))}
    runs = [[timed[c] for c in p] for p in pieces]
    comm = comm_model(cfg, pieces, tokens.shape[0], model.head.weight.element_size(),
                      key_norms, alpha_s, busbw)
    r = {"n": n, "world": world, "rank_chunks": pieces, "rank_chunk_ms_runs": runs,
         **_projection([[_median(x) for x in rank] for rank in runs], comm["ms"], single_ms, world),
         "collectives_per_rank": comm["collectives"], "collectives_per_rank_counted": sum(counts[0].values())
         if world > 1 else 0, "comm_out_bytes_per_rank": comm["out_bytes"], "comm_ms": comm["ms"],
         "single_device_ms": single_ms}
    if graphs:
        graphed = {}
        for c in sorted(sum(pieces, [])):  # in position order, as above; the first failed capture ends them
            graphed[c] = _time_chunk_graphed(model, tokens, cache, snaps[c[0]], *c, reps, device)
            if isinstance(graphed[c], str):
                break
        failed = [g for g in graphed.values() if isinstance(g, str)]
        if failed:
            r["graphed_error"] = failed[0]
        else:
            r["rank_chunk_ms_runs_graphed"] = [[graphed[c] for c in p] for p in pieces]
            r.update(_projection([[_median(graphed[c]) for c in p] for p in pieces], comm["ms"], single_ms, world,
                                 "_graphed"))
    if ref is not None:
        r["check"] = _check(model, tokens, cache, snaps, pieces, ref)
    return r


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="default 32768 (--smoke: 128 256)")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--reps", type=int, default=None, help="timed runs a chunk (default 5, --smoke 2)")
    ap.add_argument("--busbw-gbs", type=float, default=360.0, help="all_gather bus bandwidth, GB/s")
    ap.add_argument("--alpha-us", type=float, default=20.0, help="latency of one all_gather, us")
    ap.add_argument("--graphs", action="store_true",
                    help="also time each chunk replayed from a CUDA graph (no host launch overhead): *_graphed fields")
    ap.add_argument("--smoke", action="store_true", help="CPU check: the tiny preset in float32, short lengths")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.graphs and args.smoke:
        print("cp_projection: --graphs needs a CUDA GPU; leave it out with --smoke", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    lengths = args.lengths or ([128, 256] if args.smoke else [32768])
    reps = args.reps or (2 if args.smoke else 5)
    worlds = sorted(set(args.worlds))
    alpha_s, busbw = args.alpha_us * 1e-6, args.busbw_gbs * 1e9
    extra = dict(xpos_scale_base=4) if args.smoke else {}  # smoke: xPos anchor blocks of 192 positions
    cfg = from_name("tiny" if args.smoke else args.preset, max_seq_len=max(lengths), **extra)
    torch.manual_seed(0)
    with torch.device(device):
        model = Andromeda(cfg).to(dtype).eval()
    backend = model.blocks[0].attn.backend(device, dtype)
    key_norms = bool(cfg.use_rotary and cfg.rotary_xpos and cfg.n_alibi_heads and getattr(backend, "score_norms",
                                                                                         False))
    fl = {} if args.smoke else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": {**vars(args), "json": str(args.json)},
           "assumptions": {**ASSUMPTIONS, "alpha_us": args.alpha_us, "busbw_gbs": args.busbw_gbs},
           "model": {"preset": "tiny" if args.smoke else args.preset, "dtype": str(dtype),
                     "depth": cfg.depth, "dim": cfg.dim, "n_kv_heads": cfg.n_kv_heads, "dim_head": cfg.dim_head,
                     "shift_tokens": cfg.shift_tokens, "parallel_block": cfg.parallel_block,
                     "attention_backend": type(backend).__name__, "key_norms_gathered": key_norms},
           "collectives_per_layer": collective_count(cfg, key_norms), "target_ms": TARGET_MS, "rows": []}
    print("assumptions:\n" + "\n".join(f"  {k}: {v}" for k, v in res["assumptions"].items()), flush=True)
    print(f"all-gathers a layer (both chunks): {res['collectives_per_layer']} (backend "
          f"{type(backend).__name__})", flush=True)
    checked = min((w for w in worlds if w > 1), default=None)
    for n in lengths:
        tokens = torch.randint(0, cfg.num_tokens, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
        single_ms = _single(model, tokens, reps, device)
        for w in worlds:
            ref = None
            if w == checked:
                try:
                    with torch.no_grad():
                        ref = model(tokens, logits="none")
                except torch.OutOfMemoryError:  # no check at this length; the projection still runs
                    _empty_cache()
            try:
                r = row(model, tokens, w, reps, device, key_norms, alpha_s, busbw, single_ms, ref, args.graphs)
            except ConfigError as e:
                r = {"n": n, "world": w, "status": "skipped", "reason": str(e)}
            except torch.OutOfMemoryError:
                r = {"n": n, "world": w, "status": "oom"}
            del ref
            _empty_cache()
            res["rows"].append(r)
            args.json.write_text(json.dumps(res, indent=1, default=str))
            print(_line(r), flush=True)
    return 0


def _line(r: dict) -> str:
    head = f"N={r['n']} W={r['world']}: "
    if "status" in r:
        return head + f"{r['status']} {r.get('reason', '')}"
    eff = r["scaling_efficiency"]
    s = (f"rank compute {min(r['rank_compute_ms']):.2f}-{r['compute_ms_max']:.2f} ms (max/min "
         f"{r['balance_max_over_min']:.2f}), comm {r['comm_ms']:.2f} ms modelled ({r['collectives_per_rank']} "
         f"all-gathers, {r['comm_out_bytes_per_rank'] / 1e6:.1f} MB), projected {r['projected_ms']:.2f} ms "
         f"(previous lockstep compute {r['lockstep_compute_ms']:.2f} ms); single device "
         f"{r['single_device_ms'] or float('nan'):.2f} ms, efficiency {eff if eff is not None else float('nan'):.0%}"
         f"; under {TARGET_MS:.0f} ms: {'yes' if r[f'under_{TARGET_MS:.0f}ms'] else 'no'}")
    if "projected_ms_graphed" in r:
        s += (f"; CUDA graphs: rank compute {min(r['rank_compute_ms_graphed']):.2f}-"
              f"{r['compute_ms_max_graphed']:.2f} ms, projected {r['projected_ms_graphed']:.2f} ms")
    elif "graphed_error" in r:
        s += f"; CUDA graphs failed: {r['graphed_error']}"
    if "check" in r:
        s += f"; check vs single forward: max |diff| {r['check']['hidden_max_abs_diff']:.2e}"
    return head + s


if __name__ == "__main__":
    raise SystemExit(main())
