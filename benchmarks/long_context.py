"""Long context on one GPU: prefill time, peak memory, KV-cache bytes, time to first token and decode ms/token
against context length for the Andromeda 2.5B preset, beside a same-work Hugging Face Llama (issue: long
context; the spec's "sequence length impact", ../shared/spec/000).

    python benchmarks/long_context.py --json out.json [--lengths 32768 65536 131072 200000 262144]
    python benchmarks/long_context.py --smoke --json /tmp/lc.json --lengths 250 400 --chunks 0 100  # CPU check

Per length N, for Andromeda (bf16, the default attention backend: our Triton / Gluon kernels):
- prefill_ms: `model(tokens, cache=cache, logits="last")` of N tokens into a fresh cache, synchronized, in
  one call or in chunks of --chunks tokens (a chunk's activations bound the memory); logits for the last
  position only: nothing O(N^2) or O(N x vocab) is materialized. ttft_ms includes the first token's argmax.
  One timed run (--reps repeats it) after one untimed prefill of the shortest length for each chunk size:
  the ALiBi skip kernels first run (and compile) past skip_min_keys, so an 8K warm-up would leave their
  compilation inside the first timed length.
- peak_gib: torch.cuda.max_memory_allocated over the prefill (weights included); kv_cache_bytes: the
  cache's buffers (all N + decode slots).
- decode: median ms/token of the captured decode step (fused Triton kernels, GraphedDecoder(kernels="auto"))
  over --steps steps at context N, against the floor of reading the weights and the filled KV cache once a
  step, at the measured copy bandwidth and at the datasheet's. --decode-max-splits M ...: the same number of
  steps again (continuing the cache) with the fused attention split into at most M programs a KV head, each
  in its own CUDA graph (DecodeTuning.max_splits; default 1024, 4 key tiles a program past 128 programs).
  --sm90-offset-ab: each prefill again with TritonTuning.sm90_offset flipped (prefill_ms_sm90_offset_off
  with the default on): past the first xPos anchor block (28,160 positions) and in chunks, queries follow
  earlier keys, which the Hopper forward covers only with it.
- alibi_skip: with block_count.count_blocks() around a second prefill, the share of causal key tiles the
  attention kernels computed (what the ALiBi heads skipped on the model's own q/k; the non-ALiBi heads
  compute every causal tile).
The matched Llama (transformers, eager SDPA, MQA like ours, FFN width from sources.spec.llama_config_for)
prefills the same N with logits_to_keep=1; a length that does not fit is recorded as "oom".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.timing import Stopwatch
from andromeda.model import Andromeda, GraphedDecoder, from_name
from andromeda.model.backends import DecodeTuning, TritonTuning, block_count, tuned, tuning

LENGTHS = (32_768, 65_536, 131_072, 200_000, 262_144)
SHOWN = ("prefill_ms", "peak_gib", "kv_cache_bytes", "decode_kernels", "decode_ms", "decode_floor_ms",
         "decode_of_floor", "decode_of_datasheet_floor", "attn_computed_of_dense_causal",
         "alibi_computed_of_dense_causal")
GIB = 2**30


def _sync_ms(fn) -> tuple[float, object]:
    """(ms, fn()) between device synchronizations."""
    with Stopwatch("cuda" if torch.cuda.is_available() else "cpu") as sw:
        out = fn()
    return sw.elapsed_ms, out


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def _prefill(model, tokens, n_cache: int, chunk: int = 0):
    """Prefill `tokens` into a fresh cache, whole (chunk 0) or `chunk` tokens a call: (ms, peak GiB, cache,
    first token)."""
    cache = model.new_cache(1, n_cache)
    n = tokens.shape[1]
    step = chunk or n
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def run():
        with torch.no_grad():
            for a in range(0, n, step):
                logits = model(tokens[:, a : a + step], cache=cache, logits="last")
            return logits[:, -1].argmax(-1)

    ms, first = _sync_ms(run)
    return ms, _peak_gib(), cache, first


def andromeda_row(model, n: int, chunk: int, steps: int, reps: int, fl: dict, weight_bytes: int,
                  max_splits: list[int] | None = None, sm90_offset: bool = False) -> dict:
    tokens = torch.randint(0, model.cfg.num_tokens, (1, n), device=model.head.weight.device)
    times, peak = [], 0.0
    for _ in range(reps):
        ms, peak, cache, first = _prefill(model, tokens, n + steps * (1 + len(max_splits or ())) + 1, chunk)
        times.append(ms)
    row = {"n": n, "chunk": chunk, "prefill_ms": sorted(times)[len(times) // 2], "prefill_ms_runs": times,
           "peak_gib": peak, "kv_cache_bytes": cache.nbytes, "kv_filled_bytes_at_n": cache.filled_bytes()}
    row["prefill_tokens_per_s"] = n / (row["prefill_ms"] / 1e3)
    if sm90_offset:  # A/B: the same prefill with(out) the Hopper forward for the later xPos blocks and chunks
        flip = not tuning(TritonTuning).sm90_offset
        with tuned(dataclasses.replace(tuning(TritonTuning), sm90_offset=flip)):
            _prefill(model, tokens, n, chunk)  # its launches compile
            ab = [_prefill(model, tokens, n, chunk)[0] for _ in range(reps)]
        row[f"prefill_ms_sm90_offset_{'on' if flip else 'off'}"] = sorted(ab)[len(ab) // 2]
        _empty_cache()
    # time to first token: the prefill with its last-position logits and argmax (already inside _prefill)
    row["ttft_ms"] = row["prefill_ms"]
    row["decode_kernels"], ts = _decode_times(model, cache, first, steps)
    row["decode_ms"] = ts[len(ts) // 2]
    row["decode_ms_p10_p90"] = [ts[len(ts) // 10], ts[(9 * len(ts)) // 10]]
    filled = cache.filled_bytes()  # the floor's KV bytes: the cache after the timed steps
    if max_splits:  # as many steps further on, the fused attention split into at most m programs a KV head (A/B)
        row["decode_ms_by_max_splits"] = {}
        for m in max_splits:
            with tuned(DecodeTuning(max_splits=m)):
                _, tm = _decode_times(model, cache, first, steps)
            row["decode_ms_by_max_splits"][str(m)] = tm[len(tm) // 2]
    step_bytes = weight_bytes + filled
    row["decode_step_bytes"] = step_bytes
    for key, bw in (("", "copy_gb_per_s"), ("_datasheet", "datasheet_gb_per_s")):
        floor = floors.floor_ms(step_bytes, fl.get(bw))
        row[f"decode_floor{key}_ms"] = floor
        row[f"decode_of{key}_floor"] = None if floor is None else floor / row["decode_ms"]
    del cache
    _empty_cache()
    with block_count.count_blocks() as count:  # the tiles the kernels computed, against dense causal
        _prefill(model, tokens, n, chunk)
    cfg = model.cfg
    per_head = 4.0 * cfg.dim_head * n * (n + 1) / 2 * cfg.depth  # causal pairs' forward FLOPs, one head
    computed = count.flops().get("forward", 0.0)
    if not computed:  # a backend that does not count its tiles (not ours)
        return row
    row["attn_computed_of_dense_causal"] = computed / (per_head * cfg.heads)
    # the heads without ALiBi compute every causal tile (no bound to skip by): what is left is the ALiBi heads'
    alibi = cfg.n_alibi_heads
    if alibi:
        row["alibi_computed_of_dense_causal"] = (computed - per_head * (cfg.heads - alibi)) / (per_head * alibi)
    return row


def _decode_times(model, cache, first, steps: int) -> tuple[str, list[float]]:
    """(kernels, sorted ms of steps - 3 captured greedy steps after 3 untimed ones) continuing the filled
    `cache` (a later call continues `steps` positions further on)."""
    dec = GraphedDecoder(model, cache, greedy=True)
    token = first.view(1, 1)
    for _ in range(3):  # (the capture warmed up already) the first replays
        token = _greedy(dec, token)
    ts = []
    for _ in range(steps - 3):
        ms, token = _sync_ms(lambda t=token, d=dec: _greedy(d, t))
        ts.append(ms)
    return dec.kernels, sorted(ts)


def _empty_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _greedy(dec, token):
    """One captured greedy step: the next token (1, 1)."""
    _, nxt = dec.step(token, clone=False)
    return nxt.view(1, 1)


def llama_row(cfg, n: int) -> dict:
    from transformers import AutoConfig, LlamaForCausalLM

    from andromeda.sources.spec import hf_config, llama_config_for

    row = {"n": n}
    model = None
    try:
        # hf_config: transformers refuses hidden_size 2560 over 24 heads although Llama takes head_dim from the config
        config = hf_config(AutoConfig, "llama", {**llama_config_for(cfg), "max_position_embeddings": n})
        config._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
        model = model.to(torch.bfloat16).eval()
        tokens = torch.randint(0, cfg.num_tokens, (1, n), device="cuda")
        with torch.no_grad():  # warm-up: the first call selects kernels and allocates
            model(tokens[:, :4096], use_cache=True, logits_to_keep=1)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            ms, _ = _sync_ms(lambda: model(tokens, use_cache=True, logits_to_keep=1))
        row.update(prefill_ms=ms, peak_gib=torch.cuda.max_memory_allocated() / GIB)
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    finally:
        model = None
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--preset", default="andromeda")
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 32768],
                    help="prefill chunk sizes to run at each length (0: the whole sequence in one call)")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per length (3 of them warm-up)")
    ap.add_argument("--reps", type=int, default=1, help="timed prefills per length")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--sm90-offset-ab", action="store_true",
                    help="also time each prefill with TritonTuning.sm90_offset flipped (the Hopper forward for queries "
                         "after earlier keys), side by side")
    ap.add_argument("--decode-max-splits", type=int, nargs="*", default=[],
                    help="also time decode with the fused attention split into at most these many programs "
                         "(DecodeTuning.max_splits; the default is 1024), side by side")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check of the script: the tiny preset with anchor blocks of 192 positions, no floors")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    fl = {} if args.smoke else floors.measure(device)
    res = {**floors.provenance(collect_env(), fl), "args": vars(args) | {"json": str(args.json)},
           "andromeda": [], "llama": []}

    def save():
        args.json.write_text(json.dumps(res, indent=1, default=str))

    extra = dict(xpos_scale_base=4) if args.smoke else {}
    cfg = from_name("tiny" if args.smoke else args.preset, max_seq_len=max(args.lengths) + args.steps + 1, **extra)
    torch.manual_seed(0)
    with torch.device(device):
        model = Andromeda(cfg).to(torch.float32 if args.smoke else torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    res["weight_bytes"] = weight_bytes
    warm = min(args.lengths)  # compile and tune every kernel the timed prefills use (the skip kernels included)
    for chunk in args.chunks:
        if chunk < warm:
            _prefill(model, torch.randint(0, cfg.num_tokens, (1, warm), device=device), warm, chunk)
    _empty_cache()
    for n, chunk in [(n, c) for n in sorted(args.lengths) for c in args.chunks if c < n]:
        try:
            row = andromeda_row(model, n, chunk, args.steps, args.reps, fl, weight_bytes, args.decode_max_splits,
                                args.sm90_offset_ab)
        except torch.OutOfMemoryError:
            res["andromeda"].append({"n": n, "chunk": chunk, "status": "oom"})
            _empty_cache()
            print(f"andromeda {n} chunk {chunk}: out of memory", flush=True)
            continue
        res["andromeda"].append(row)
        save()
        print(f"andromeda {n} chunk {chunk}: " + ", ".join(f"{k} {row[k]}" for k in SHOWN if k in row), flush=True)
    del model
    _empty_cache()
    if not args.no_llama and not args.smoke:
        for n in sorted(args.lengths):
            row = llama_row(cfg, n)
            res["llama"].append(row)
            save()
            print(f"llama {n}: {row}", flush=True)


if __name__ == "__main__":
    main()
