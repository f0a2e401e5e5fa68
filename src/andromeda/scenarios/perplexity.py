"""perplexity: token perplexity and cross-entropy, bits per byte, byte and word perplexity, with a
bootstrap CI; and the same through a KV cache, full precision or quantized (int8/int4).

Windows (data/windows.py, with a picture) feed `seq_len` tokens and score every token of a document
after its first exactly once: non-overlapping (stride null: lm-evaluation-harness's rolling
log-likelihood) or sliding with a stride (every target past the first window keeps at least
seq_len - stride + 1 tokens of context). Positions whose next token is not a target carry the
label -100. `seq_len: model` is the model's context length (max_seq_len).

  ppl              exp(total NLL / scored tokens): token-level, depends on the tokenizer
  bits_per_byte    total NLL in bits / UTF-8 bytes of the scored text: tokenizer-independent
  byte_ppl         2 ** bits_per_byte
  word_ppl         exp(total NLL / words), over documents scored whole (text sources); words counted
                   as `words` says: whitespace (len(text.split())) or lm-eval (len(re.split(r"\\s+", text)))

Nothing is cut unless `max_tokens` is set; then the record says how many documents and tokens were
scored of how many (tokens_total, documents_total, documents_whole) and carries a warning.

The CI is a percentile bootstrap (measure.stats.bootstrap_ci) of the ratio total NLL / tokens over
documents (or over windows when there is one document): `ci_unit`.

cache: off scores each window with one forward pass; full / int8 / int4 feed the window through a
fresh KV cache (model.new_cache(quant=...)) `decode_chunk` tokens at a time, teacher-forced, and
compare those logits with the forward pass's: logit_max_abs_diff, logit_mean_abs_diff (over the
scored positions and the whole vocabulary), ppl_ratio; kv_bytes_per_token is cache.nbytes per
cached token.

A batch whose float32 logits would pass LOGITS_BUDGET_BYTES (1 GiB) is scored from the final hidden states a
chunk of positions at a time (chunked_token_nll): memory bounded at any window length.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from andromeda.data.loaders import DataSource, Documents, open_data, token_bytes
from andromeda.data.windows import Window, plan_windows, targets_of
from andromeda.errors import ConfigError, UnsupportedError
from andromeda.measure.stats import bootstrap_ci
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length
from andromeda.scenarios.config.perplexity import CacheMode, PerplexityConfig
from andromeda.train.fused_ce import hidden_and_head

IGNORE = -100
LN2 = math.log(2.0)
QUANT = {"full": "none", "int8": "int8", "int4": "int4"}


# ---- scoring -----------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-window sums; windows in plan order."""

    windows: list[Window]
    nll: np.ndarray  # (W,) float64: total NLL (nats) of each window's targets
    targets: np.ndarray  # (W,) int64
    bytes: np.ndarray  # (W,) int64: UTF-8 bytes of each window's targets
    seconds: float = 0.0
    ref_nll: np.ndarray | None = None  # (W,) cached modes: the same windows scored by the forward pass
    logit_max_abs_diff: float | None = None
    logit_sum_abs_diff: float = 0.0
    logit_count: int = 0
    kv_bytes_per_token: float | None = None
    kv_cache_bytes: int | None = None


def window_batch(docs: Documents, windows: Sequence[Window], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens fed (B, N) and the label of each fed position (B, N): the next token where it
    is a target, -100 for context and padding."""
    n = max(w.length for w in windows)
    tokens = torch.full((len(windows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), n), IGNORE, dtype=torch.long)
    for i, w in enumerate(windows):
        seg = torch.as_tensor(np.asarray(docs.tokens[w.doc][w.begin : w.end], dtype=np.int64))  # fed + 1
        tokens[i, : w.length] = seg[:-1]
        labels[i, w.score_from - 1 - w.begin : w.length] = seg[w.score_from - w.begin :]
    return tokens, labels


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, N, V) logits, (B, N) labels of the next token -> (B, N) NLL (nats), 0 where ignored."""
    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")


# A batch whose float32 logits would pass this many bytes is scored from the final hidden states, NLL_ROWS
# positions at a time, so a long window (200K tokens x 50K vocabulary: 40 GB of logits) needs one chunk's.
LOGITS_BUDGET_BYTES = 2**30
NLL_ROWS = 4096


def chunked_token_nll(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor,
                      rows: int | None = None) -> torch.Tensor:
    """token_nll without the (B, N, V) logits: the model's final hidden states (train.fused_ce.hidden_and_head:
    Andromeda or a transformers causal LM), then its head and the NLL `rows` positions at a time (the head in
    the model's dtype, the NLL in float32, as token_nll of the full logits); rows: NLL_ROWS by default."""
    rows = rows or NLL_ROWS
    hidden, weight = hidden_and_head(model, tokens)
    h, y = hidden.flatten(0, 1), labels.flatten()
    out = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    for a in range(0, h.shape[0], rows):
        logits = F.linear(h[a : a + rows], weight).float()  # (rows, V)
        out[a : a + rows] = F.cross_entropy(logits, y[a : a + rows], ignore_index=IGNORE, reduction="none")
    return out.view_as(labels)


def _bytes_of(windows: Sequence[Window], docs: Documents, tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes of each window's targets: exact for byte tokenizers (one byte per id < 256),
    the length of the decoded targets for other tokenizers (exact totals come from _total_bytes)."""
    return np.array([token_bytes(tokenizer, docs.tokens[w.doc][w.score_from : w.end]) for w in windows],
                    dtype=np.int64)


def _total_bytes(scores: Scores, docs: Documents, tokenizer: Any) -> tuple[int, str]:
    """(bytes behind all scored tokens, how they were counted)."""
    if _byte_level(tokenizer):
        return int(scores.bytes.sum()), "exact: byte tokens"
    whole = _whole_docs(docs, scores.windows)
    used = {w.doc for w in scores.windows}
    if docs.n_bytes is not None and used <= whole:
        # whole documents: their text's bytes, less each first token's (never a target) unless it is BOS
        first = 0 if docs.bos else sum(token_bytes(tokenizer, docs.tokens[d][:1]) for d in used)
        return sum(docs.n_bytes[d] for d in used) - first, "exact: text bytes of whole documents"
    return int(scores.bytes.sum()), "decoded: bytes of the decoded target tokens"


def _byte_level(tokenizer: Any) -> bool:
    from andromeda.model.tokenizer import ByteTokenizer

    return tokenizer is None or isinstance(tokenizer, ByteTokenizer)


def _whole_docs(docs: Documents, windows: Sequence[Window]) -> set[int]:
    """Documents every target of which is scored by these windows."""
    scored: dict[int, int] = {}
    for w in windows:
        scored[w.doc] = scored.get(w.doc, 0) + w.n_targets
    return {d for d, n in scored.items() if n == len(docs.tokens[d]) - 1}


def _batches(windows: Sequence[Window], batch: int, by_length: bool) -> list[list[int]]:
    """Window indices in batches; by_length groups equal lengths (no padding) for cached decoding."""
    if not by_length:
        return [list(range(i, min(i + batch, len(windows)))) for i in range(0, len(windows), batch)]
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(w.length, []).append(i)
    return [idx[i : i + batch] for idx in groups.values() for i in range(0, len(idx), batch)]


def score_windows(logits_fn: Callable[[torch.Tensor], torch.Tensor], docs: Documents, windows: Sequence[Window],
                  *, batch: int = 8, device: torch.device | str = "cpu", tokenizer: Any = None,
                  pad_id: int = 0, model: torch.nn.Module | None = None, vocab: int = 0) -> Scores:
    """NLL of every window's targets with one forward pass per batch of windows. With `model` (the module behind
    logits_fn, of `vocab` tokens), a batch whose float32 logits would pass LOGITS_BUDGET_BYTES is scored by
    chunked_token_nll where the model allows it (Andromeda, a transformers causal LM; else the full logits)."""
    device = torch.device(device)
    nll = np.zeros(len(windows), dtype=np.float64)
    targets = np.array([w.n_targets for w in windows], dtype=np.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in _batches(windows, batch, by_length=False):
            tokens, labels = window_batch(docs, [windows[i] for i in idx], pad_id)
            tokens, labels = tokens.to(device), labels.to(device)
            per_token = None
            if model is not None and tokens.numel() * vocab * 4 > LOGITS_BUDGET_BYTES:
                try:
                    per_token = chunked_token_nll(model, tokens, labels)
                except UnsupportedError:  # not a model whose hidden states and head can be taken apart
                    per_token = None
            if per_token is None:
                per_token = token_nll(logits_fn(tokens), labels)  # (B, N)
            nll[idx] = _row_sums(per_token)
    _sync(device)
    return Scores(list(windows), nll, targets, _bytes_of(windows, docs, tokenizer), time.perf_counter() - t0)


def score_windows_cached(bundle, docs: Documents, windows: Sequence[Window], *, mode: CacheMode, batch: int = 8,
                         device: torch.device | str = "cpu", group_size: int = 64, window: int = 0,
                         chunk: int = 1, tokenizer: Any = None) -> Scores:
    """Teacher-forced decoding through a KV cache, `chunk` tokens per call; logits compared with the
    forward pass over the same window."""
    device = torch.device(device)
    kind = bundle.info.get("kind")
    if kind == "andromeda":
        if mode != "full" and "quant" not in inspect.signature(bundle.model.new_cache).parameters:
            raise UnsupportedError(f"cache {mode}: this model's new_cache() takes no quant= argument "
                                   "(quantized KV caches are not in this version of andromeda.model)")
    elif kind == "hf":
        if mode != "full":
            raise UnsupportedError(f"cache {mode}: quantized caches are wired for Andromeda models only")
    else:
        raise UnsupportedError(f"cache {mode}: cached decoding is not wired for '{kind}' models")
    nll = np.zeros(len(windows), dtype=np.float64)
    targets = np.array([w.n_targets for w in windows], dtype=np.int64)
    out = Scores(list(windows), nll, targets, _bytes_of(windows, docs, tokenizer), logit_max_abs_diff=0.0,
                 ref_nll=np.zeros(len(windows), dtype=np.float64))
    kv_tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in _batches(windows, batch, by_length=True):
            tokens, labels = window_batch(docs, [windows[i] for i in idx])
            tokens, labels = tokens.to(device), labels.to(device)
            b, n = tokens.shape
            ref = bundle.logits(tokens).float()  # (B, N, V)
            parts = []
            if kind == "andromeda":
                kw = {} if mode == "full" else {"quant": QUANT[mode], "group_size": group_size, "window": window}
                cache = bundle.model.new_cache(b, n, **kw)
                for s in range(0, n, chunk):
                    parts.append(bundle.model(tokens[:, s : s + chunk], cache=cache).float())
                held = int(cache.nbytes)
            else:
                past = None
                for s in range(0, n, chunk):
                    res = bundle.model(input_ids=tokens[:, s : s + chunk], past_key_values=past, use_cache=True)
                    past = res.past_key_values
                    parts.append(res.logits.float())
                from andromeda.scenarios.decoding import _tensors

                held = int(sum(t.nbytes for t in _tensors(past)))
            if out.kv_cache_bytes is None or b * n > kv_tokens:  # the largest batch: least fixed overhead
                out.kv_cache_bytes, out.kv_bytes_per_token, kv_tokens = held, held / (b * n), b * n
            logits = torch.cat(parts, dim=1)  # (B, N, V)
            nll[idx] = _row_sums(token_nll(logits, labels))
            out.ref_nll[idx] = _row_sums(token_nll(ref, labels))
            scored = labels != IGNORE  # (B, N): positions whose prediction is scored
            diff = (logits - ref).abs()[scored]  # (scored, V)
            if diff.numel():
                out.logit_max_abs_diff = max(out.logit_max_abs_diff, float(diff.max()))
                out.logit_sum_abs_diff += float(diff.sum(dim=-1).cpu().double().sum())
                out.logit_count += diff.numel()
    _sync(device)
    out.seconds = time.perf_counter() - t0
    return out


def _row_sums(per_token: torch.Tensor) -> np.ndarray:
    """(B, N) NLLs -> (B,) float64 sums, added on the CPU (MPS has no float64)."""
    return per_token.detach().cpu().double().sum(dim=1).numpy()


def _sync(device: torch.device) -> None:
    from andromeda.measure.timing import cuda_sync

    cuda_sync(device)


# ---- metrics -----------------------------------------------------------------------------------
def _units(scores: Scores, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(nll, targets, bytes) per bootstrap unit: documents, or windows when there is one document."""
    docs = sorted({w.doc for w in scores.windows})
    if unit == "window" or (unit == "auto" and len(docs) < 2):
        return scores.nll, scores.targets, scores.bytes, "window"
    pos = {d: i for i, d in enumerate(docs)}
    nll, tgt, byt = np.zeros(len(docs)), np.zeros(len(docs), np.int64), np.zeros(len(docs), np.int64)
    for w, a, b, c in zip(scores.windows, scores.nll, scores.targets, scores.bytes, strict=True):
        i = pos[w.doc]
        nll[i] += a
        tgt[i] += b
        byt[i] += c
    return nll, tgt, byt, "document"


def _ratio_ci(num: np.ndarray, den: np.ndarray, ci: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Bootstrap CI of sum(num) / sum(den) over units resampled with replacement."""

    def stat(idx: np.ndarray, axis: int = 1) -> np.ndarray:
        i = idx.astype(np.int64)  # (n_boot, n)
        return num[i].sum(axis=axis) / np.maximum(den[i].sum(axis=axis), 1e-300)

    return bootstrap_ci(np.arange(len(num), dtype=np.float64), stat, ci=ci, n_boot=n_boot, seed=seed)


def perplexity_metrics(scores: Scores, docs: Documents, *, tokenizer: Any = None, ci: float = 0.95,
                       n_boot: int = 2000, seed: int = 0, ci_unit: str = "auto",
                       words: str = "whitespace") -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics and info from window scores. Every metric here is computed, none estimated from another."""
    n_tok = int(scores.targets.sum())
    if n_tok == 0:
        raise ConfigError("perplexity: no token was scored (documents of one token?)")
    total = float(scores.nll.sum())
    ce = total / n_tok
    m: dict[str, float] = {
        "ppl": math.exp(ce),
        "cross_entropy_nats": ce,
        "cross_entropy_bits": ce / LN2,
        "tokens_scored": float(n_tok),
        "windows": float(len(scores.windows)),
        "documents": float(len({w.doc for w in scores.windows})),
    }
    nll_u, tgt_u, byt_u, unit = _units(scores, ci_unit)
    info: dict[str, Any] = {"ci_unit": unit, "ci": ci}
    if len(nll_u) >= 2:
        lo, hi = _ratio_ci(nll_u, tgt_u.astype(np.float64), ci, n_boot, seed)
        m.update(cross_entropy_nats_ci_low=lo, cross_entropy_nats_ci_high=hi,
                 ppl_ci_low=math.exp(lo), ppl_ci_high=math.exp(hi))
    n_bytes, how = _total_bytes(scores, docs, tokenizer)
    if n_bytes > 0:
        bpb = total / LN2 / n_bytes
        m.update(bits_per_byte=bpb, byte_ppl=2.0**bpb, bytes_scored=float(n_bytes), tokens_per_byte=n_tok / n_bytes)
        info["bytes"] = how
        if len(nll_u) >= 2:
            lo, hi = _ratio_ci(nll_u / LN2, byt_u.astype(np.float64), ci, n_boot, seed)
            m.update(bits_per_byte_ci_low=lo, bits_per_byte_ci_high=hi)
    counts = docs.words(words)
    if counts is not None:
        whole = sorted(_whole_docs(docs, scores.windows))
        n_words = sum(counts[d] for d in whole)
        info["words"] = words
        if n_words:
            doc_nll = sum(float(a) for w, a in zip(scores.windows, scores.nll, strict=True) if w.doc in whole)
            m.update(word_ppl=math.exp(doc_nll / n_words), words_scored=float(n_words))
            if not docs.bos:
                info["word_ppl"] = "each document's first token has no context and is not scored"
    if scores.seconds > 0:
        m["eval_tokens_per_s"] = n_tok / scores.seconds
    floor = docs.info.get("floor_ppl")
    if floor:
        m.update(floor_ppl=float(floor), ppl_over_floor=m["ppl"] / float(floor),
                 entropy_bits_per_byte=float(docs.info["entropy_bits_per_byte"]))
    if scores.logit_max_abs_diff is not None:
        m["logit_max_abs_diff"] = scores.logit_max_abs_diff
        if scores.logit_count:
            m["logit_mean_abs_diff"] = scores.logit_sum_abs_diff / scores.logit_count
    if scores.ref_nll is not None:
        ref_ce = float(scores.ref_nll.sum()) / n_tok
        m.update(ppl_reference=math.exp(ref_ce), ppl_ratio=m["ppl"] / math.exp(ref_ce),
                 cross_entropy_delta_nats=ce - ref_ce)
    if scores.kv_bytes_per_token is not None:
        m["kv_bytes_per_token"] = scores.kv_bytes_per_token
        m["kv_cache_mib"] = scores.kv_cache_bytes / 2**20
    return m, info


# ---- data, shared with the training and teacher_student scenarios ------------------------------
_DATA: dict[tuple, tuple[Any, DataSource]] = {}


def open_cached(spec: str, tokenizer: Any, add_bos: bool = True) -> DataSource:
    """open_data, remembered for the last few (spec, tokenizer) pairs: a sweep tokenizes once."""
    key = (spec, id(tokenizer), add_bos)
    if key not in _DATA:
        if len(_DATA) >= 4:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = (tokenizer, open_data(spec, tokenizer, add_bos=add_bos))  # holding tokenizer keeps id unique
    return _DATA[key][1]


def check_vocab(bundle, docs: Documents, windows: Sequence[Window]) -> None:
    used = {w.doc for w in windows}
    top = max((int(np.max(docs.tokens[d])) for d in used if len(docs.tokens[d])), default=-1)
    if top >= bundle.facts.vocab:
        raise ConfigError(f"data: token id {top} is outside the model's vocabulary ({bundle.facts.vocab} tokens)")


def evaluate(bundle, docs: Documents, *, seq_len: int, stride: int | None = None, batch: int = 8,
             max_tokens: int | None = None, device: torch.device | str = "cpu", cache: CacheMode = "off",
             group_size: int = 64, cache_window: int = 0, decode_chunk: int = 1, ci: float = 0.95,
             n_boot: int = 2000, seed: int = 0, ci_unit: str = "auto",
             words: str = "whitespace") -> tuple[dict[str, float], dict[str, Any]]:
    """Perplexity metrics of a model bundle on documents (see the module docstring): seq_len tokens fed
    per window, every target scored once, all of them unless max_tokens stops the evaluation early."""
    lengths = [len(t) for t in docs.tokens]
    windows = plan_windows(lengths, seq_len, stride, max_tokens)
    if not windows:
        raise ConfigError("perplexity: the data has no document of two or more tokens")
    check_vocab(bundle, docs, windows)
    tok = bundle.tokenizer
    pad = getattr(tok, "pad_id", None) or 0
    if cache == "off":
        model = bundle.model if isinstance(bundle.model, torch.nn.Module) else None
        scores = score_windows(bundle.logits, docs, windows, batch=batch, device=device, tokenizer=tok, pad_id=pad,
                               model=model, vocab=bundle.facts.vocab)
    else:
        scores = score_windows_cached(bundle, docs, windows, mode=cache, batch=batch, device=device,
                                      group_size=group_size, window=cache_window, chunk=decode_chunk,
                                      tokenizer=tok)
    metrics, info = perplexity_metrics(scores, docs, tokenizer=tok, ci=ci, n_boot=n_boot, seed=seed,
                                       ci_unit=ci_unit, words=words)
    info["windows"] = "non-overlapping" if stride is None or stride == seq_len else f"sliding, stride {stride}"
    info["seq_len"] = seq_len
    metrics.update(coverage(docs, windows, lengths))
    if metrics["tokens_scored"] < metrics["tokens_total"]:
        info["truncated"] = True
        info["warnings"] = [truncation_warning(metrics, max_tokens)]
    return metrics, info


def coverage(docs: Documents, windows: Sequence[Window], lengths: Sequence[int]) -> dict[str, float]:
    """What the data holds and how much of it the windows score: tokens_total (targets in all documents),
    documents_total, documents_whole (every target scored)."""
    return {"tokens_total": float(targets_of(lengths)),
            "documents_total": float(sum(1 for n in lengths if n >= 2)),
            "documents_whole": float(len(_whole_docs(docs, windows)))}


def truncation_warning(m: dict[str, float], max_tokens: int | None) -> str:
    partial = int(m["documents"] - m["documents_whole"])
    return (f"max_tokens {max_tokens} stopped the evaluation early: {int(m['tokens_scored'])} of "
            f"{int(m['tokens_total'])} tokens scored, {int(m['documents_whole'])} of {int(m['documents_total'])} "
            f"documents whole{f' and {partial} in part' if partial else ''}; word_ppl covers whole documents only. "
            "Set max_tokens: null to score everything")


# ---- the scenario ------------------------------------------------------------------------------
@register("perplexity")
class Perplexity:
    Config = PerplexityConfig

    def run(self, bundle, p, ctx):
        seq = bundle.facts.max_seq_len if p["seq_len"] == "model" else p["seq_len"]
        if (reason := check_length(bundle, seq)) is not None:
            return ctx.skip(reason)
        if p["stride"] is not None and p["stride"] > seq:
            raise ConfigError(f"stride: {p['stride']} is more than seq_len ({seq}, the model's context); "
                              f"use a stride from 1 to {seq}, or null for non-overlapping windows")
        data = open_cached(p["data"], bundle.tokenizer, p["add_bos"])
        docs = data.documents(p["split"])
        metrics, info = evaluate(
            bundle, docs, seq_len=seq, stride=p["stride"], batch=p["batch"], max_tokens=p["max_tokens"],
            device=ctx.device, cache=p["cache"], group_size=p["group_size"], cache_window=p["cache_window"],
            decode_chunk=p["decode_chunk"],
            ci=p["ci"], n_boot=p["n_boot"], seed=ctx.seed, ci_unit=p["ci_unit"], words=p["words"],
        )
        info.update(data=data.spec, data_kind=data.kind)
        return [ctx.record(metrics, info=info)]


__all__ = [
    "PerplexityConfig", "Perplexity", "Scores", "evaluate", "score_windows", "score_windows_cached",
    "perplexity_metrics", "window_batch", "token_nll", "open_cached", "check_vocab", "coverage",
    "truncation_warning",
]
