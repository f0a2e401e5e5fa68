"""Attention probabilities recomputed from q and k in query chunks, their statistics, and the
gradients flowing through the attention (q, k, v and the scores), recomputed chunk by chunk.

The model keeps its fast kernel; here the (B, H, C, Nk) probabilities of C queries at a time are
recomputed in float32 exactly as the eager reference does (scores = q k^T * scale + ALiBi bias,
masked, softmax), reduced to statistics, and dropped. Memory is O(C * Nk) per head, never O(N^2).

Per head, over the batch and every query i with more than one key it may attend to (n_i keys):
  entropy          H_i = -sum_j p_ij ln p_ij                       (nats)
  entropy_norm     H_i / ln n_i  (in [0, 1]; n_i = i + 1 for causal attention; rows with n_i = 1,
                   e.g. query 0, are excluded: their entropy is 0 and ln 1 = 0)
  max_weight       max_j p_ij
  span             sum_j p_ij |i - j|                               (tokens)
  histogram        counts of the weights p_ij of allowed (i, j) pairs in the bins HIST_EDGES
A head "pays attention" (is concentrated) when its mean entropy_norm < entropy_threshold or its
mean max_weight > max_weight_threshold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from andromeda.diagnostics.streaming import RunningStats

# weight histogram: [0, 1e-6), then 4 log-spaced bins per decade from 1e-6 to 1 (the last bin holds 1.0)
HIST_EDGES: list[float] = [0.0] + [10 ** (e / 4) for e in range(-24, 1)]
N_BINS = len(HIST_EDGES) - 1
DEFAULT_CHUNK_ELEMS = 1 << 21  # probabilities per chunk: 8 MiB of float32


@dataclass
class AttentionInputs:
    """One attention call, as the kernel saw it. q (B, H, Nq, D); k, v (B, H_kv, Nk, D)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor | None
    scale: float
    causal: bool
    alibi_slopes: torch.Tensor | None = None  # (H,), zeros on heads without ALiBi
    mask: torch.Tensor | None = None  # broadcastable to (B, H, Nq, Nk): bool (True = keep) or additive float
    position_bias: torch.Tensor | None = None  # additive, broadcastable to (B, H, Nq, Nk)


def chunk_rows(inp: AttentionInputs, heads: int, max_elems: int = DEFAULT_CHUNK_ELEMS) -> int:
    """Query rows per chunk: as many as fit in max_elems probabilities, and at least head_dim rows, so a
    chunk (B, H, C, Nk) is never smaller than the queries themselves (B, H, Nq, D) allow: long inputs do
    not fall into thousands of tiny chunks, and memory stays linear in N."""
    b, n_k, d = inp.q.shape[0], inp.k.shape[2], inp.q.shape[3]
    return max(1, min(inp.q.shape[2], max(max_elems // max(1, b * heads * n_k), d)))


def _expand_kv(t: torch.Tensor, heads: int, sel: list[int] | None) -> torch.Tensor:
    """(B, H_kv, N, D) -> (B, H_sel, N, D): query head h reads kv head h // (H / H_kv)."""
    group = heads // t.shape[1]
    idx = list(range(heads)) if sel is None else sel
    kv_idx = torch.tensor([h // group for h in idx], device=t.device)
    return t.index_select(1, kv_idx)


def _sub(t: torch.Tensor | None, dim: int, sel: list[int] | None, rows: slice) -> torch.Tensor | None:
    """Slice a broadcastable mask/bias: heads on dim 1 (if not broadcast), query rows on dim 2."""
    if t is None:
        return None
    if sel is not None and t.shape[1] != 1:
        t = t[:, sel]
    if t.shape[2] != 1:
        t = t[:, :, rows]
    return t


def scores_chunk(inp: AttentionInputs, q_c: torch.Tensor, k_e: torch.Tensor, start: int,
                 sel: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, Hs, C, Nk) float32 before masking, and keep (B|1, Hs|1, C, Nk) bool.

    q_c: (B, Hs, C, D) rows start..start+C of the queries; k_e: (B, Hs, Nk, D) expanded keys.
    """
    n_q, n_k = inp.q.shape[2], inp.k.shape[2]
    c = q_c.shape[2]
    s = (q_c.float() @ k_e.float().transpose(-1, -2)) * inp.scale  # (B, Hs, C, Nk)
    q_pos = torch.arange(start, start + c, device=s.device) + (n_k - n_q)  # queries are the last Nq positions
    rel = q_pos[:, None] - torch.arange(n_k, device=s.device)[None, :]  # (C, Nk): i - j
    if inp.alibi_slopes is not None:
        slopes = inp.alibi_slopes if sel is None else inp.alibi_slopes[sel]
        dist = rel.float() if inp.causal else rel.abs().float()
        s = s + (-slopes.float()[:, None, None] * dist[None])[None]
    rows = slice(start, start + c)
    if inp.position_bias is not None:
        s = s + _sub(inp.position_bias, 1, sel, rows).float()
    keep = (rel >= 0)[None, None] if inp.causal else torch.ones(1, 1, c, n_k, dtype=torch.bool, device=s.device)
    if inp.mask is not None:
        m = _sub(inp.mask, 1, sel, rows)
        if m.dtype == torch.bool:
            keep = keep & m
        else:
            s = s + m.float()
            keep = keep & (m > torch.finfo(m.dtype).min / 2)
    return s, keep


def _softmax(s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    p = s.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    return torch.nan_to_num(p, nan=0.0)  # rows with no allowed key


def iter_probs(inp: AttentionInputs, heads: list[int] | None = None, chunk: int | None = None,
               max_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(start row, probs (B, Hs, C, Nk) float32, keep mask) per query chunk, for the selected heads."""
    h = inp.q.shape[1]
    hs = h if heads is None else len(heads)
    q = inp.q if heads is None else inp.q[:, heads]
    k_e = _expand_kv(inp.k, h, heads)
    c = chunk or chunk_rows(inp, hs, max_elems)
    for start in range(0, q.shape[2], c):
        s, keep = scores_chunk(inp, q[:, :, start : start + c], k_e, start, heads)
        yield start, _softmax(s, keep), keep


def recompute_probs(inp: AttentionInputs, heads: list[int] | None = None, chunk: int | None = None) -> torch.Tensor:
    """The full (B, Hs, Nq, Nk) probabilities, assembled from chunks (for tests and small inputs)."""
    return torch.cat([p for _, p, _ in iter_probs(inp, heads, chunk)], dim=2)


# ---- statistics -----------------------------------------------------------------------------------
def entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """-sum_j p ln p over the last dim, summed in float64 (0 ln 0 = 0)."""
    return torch.special.entr(p).sum(-1, dtype=torch.float64)


def normalized_entropy(p: torch.Tensor, n_allowed: torch.Tensor) -> torch.Tensor:
    """H_i / ln n_i; NaN where n_i <= 1 (undefined: a single key)."""
    h = entropy_rows(p)
    n = n_allowed.double().expand_as(h)
    return torch.where(n > 1, h / torch.log(n.clamp(min=2)), torch.full_like(h, float("nan")))


@dataclass
class HeadStats:
    """Per-head accumulators for one layer (float64 sums over batch and queries with n_i > 1)."""

    heads: list[int]
    rows: torch.Tensor = None  # (Hs,) number of rows counted
    ent: torch.Tensor = None  # sum of raw entropy (nats)
    ent_n: torch.Tensor = None  # sum of normalized entropy
    ent_n2: torch.Tensor = None  # sum of squares of normalized entropy
    maxw: torch.Tensor = None
    span: torch.Tensor = None
    hist: torch.Tensor = None  # (Hs, N_BINS) counts
    heatmap: torch.Tensor | None = None  # (Hs, L, L): probabilities of batch item 0, first L queries/keys
    heatmap_len: int = 0

    def __post_init__(self):
        hs = len(self.heads)
        z = torch.zeros(hs, dtype=torch.float64)
        self.rows, self.ent, self.ent_n, self.ent_n2 = z.clone(), z.clone(), z.clone(), z.clone()
        self.maxw, self.span = z.clone(), z.clone()
        self.hist = torch.zeros(hs, N_BINS, dtype=torch.float64)

    def update(self, start: int, p: torch.Tensor, keep: torch.Tensor, n_q: int, n_k: int) -> None:
        """p (B, Hs, C, Nk) probabilities of rows start..start+C; keep broadcastable to p."""
        dev = p.device
        b, hs, c, _ = p.shape
        keep = keep.expand(b, hs, c, n_k)
        n_allowed = keep.sum(-1)  # (B, Hs, C)
        w = (n_allowed > 1).to(torch.float64)  # rows that count: more than one allowed key
        h = entropy_rows(p)  # (B, Hs, C) float64
        hn = h / torch.log(n_allowed.clamp(min=2).to(torch.float64))
        q_pos = torch.arange(start, start + c, device=dev) + (n_k - n_q)
        dist = (q_pos[:, None] - torch.arange(n_k, device=dev)[None, :]).abs().to(p.dtype)  # (C, Nk)
        span = (p * dist).sum(-1, dtype=torch.float64)
        maxw = p.amax(-1).to(torch.float64)
        if self.rows.device != dev:  # accumulate where the probabilities are: no sync per chunk
            for name in ("rows", "ent", "ent_n", "ent_n2", "maxw", "span", "hist"):
                setattr(self, name, getattr(self, name).to(dev))
        self.rows += w.sum(dim=(0, 2))
        self.ent += (h * w).sum(dim=(0, 2))
        self.ent_n += (hn * w).sum(dim=(0, 2))
        self.ent_n2 += (hn * hn * w).sum(dim=(0, 2))
        self.maxw += (maxw * w).sum(dim=(0, 2))
        self.span += (span * w).sum(dim=(0, 2))
        edges = torch.tensor(HIST_EDGES[1:-1], device=dev, dtype=p.dtype)
        idx = torch.bucketize(p, edges, right=True, out_int32=True)  # bin 0..N_BINS-1
        idx += (torch.arange(hs, device=dev, dtype=torch.int32) * N_BINS)[None, :, None, None]
        idx.masked_fill_(~keep, hs * N_BINS)  # disallowed pairs go to a dump bin
        counts = torch.bincount(idx.reshape(-1), minlength=hs * N_BINS + 1)[: hs * N_BINS]
        self.hist += counts.view(hs, N_BINS).to(torch.float64)
        if self.heatmap_len and start < self.heatmap_len:
            L = self.heatmap_len
            if self.heatmap is None:
                self.heatmap = torch.zeros(hs, min(L, n_q), min(L, n_k))
            r = max(0, min(c, self.heatmap.shape[1] - start))
            self.heatmap[:, start : start + r] = p[0, :, :r, :L].float().cpu()

    def summary(self, entropy_threshold: float, max_weight_threshold: float) -> dict:
        for name in ("rows", "ent", "ent_n", "ent_n2", "maxw", "span", "hist"):
            setattr(self, name, getattr(self, name).cpu())
        n = self.rows.clamp(min=1)
        ent_n = self.ent_n / n
        var = (self.ent_n2 / n - ent_n**2).clamp(min=0)
        maxw = self.maxw / n
        concentrated = (ent_n < entropy_threshold) | (maxw > max_weight_threshold)
        empty = self.rows == 0
        nan = torch.full_like(ent_n, float("nan"))
        return {
            "heads": list(self.heads),
            "rows": self.rows.tolist(),
            "entropy_nats": torch.where(empty, nan, self.ent / n).tolist(),
            "entropy_norm_mean": torch.where(empty, nan, ent_n).tolist(),
            "entropy_norm_std": torch.where(empty, nan, var.sqrt()).tolist(),
            "max_weight_mean": torch.where(empty, nan, maxw).tolist(),
            "span_tokens": torch.where(empty, nan, self.span / n).tolist(),
            "concentrated": (concentrated & ~empty).tolist(),
            "heads_attending": int((concentrated & ~empty).sum()),
            "hist": self.hist.tolist(),
            "hist_edges": HIST_EDGES,
            "heatmap": None if self.heatmap is None else self.heatmap.tolist(),
        }


def attention_stats(inp: AttentionInputs, heads: list[int] | None = None, *, heatmap_len: int = 0,
                    chunk: int | None = None, max_elems: int = DEFAULT_CHUNK_ELEMS,
                    acc: HeadStats | None = None) -> HeadStats:
    sel = list(range(inp.q.shape[1])) if heads is None else list(heads)
    acc = acc or HeadStats(sel, heatmap_len=heatmap_len)
    n_q, n_k = inp.q.shape[2], inp.k.shape[2]
    with torch.no_grad():
        for start, p, keep in iter_probs(inp, heads, chunk, max_elems):
            acc.update(start, p, keep, n_q, n_k)
    return acc


# ---- gradients through the attention ------------------------------------------------------------
@dataclass
class AttentionGrads:
    """Running statistics of dL/dq, dL/dk, dL/dv (post QK-norm / rotary) and dL/dscores, per layer."""

    q: RunningStats = field(default_factory=RunningStats)
    k: RunningStats = field(default_factory=RunningStats)
    v: RunningStats = field(default_factory=RunningStats)
    scores: RunningStats = field(default_factory=RunningStats)  # allowed (i, j) pairs only
    head_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # per-head sum of squares

    def _head(self, name: str, g: torch.Tensor) -> None:
        sq = (g * g).sum(dim=tuple(d for d in range(g.dim()) if d != 1), dtype=torch.float64).cpu()
        self.head_sq[name] = sq if name not in self.head_sq else self.head_sq[name] + sq

    def summary(self) -> dict[str, dict]:
        out = {}
        for name in ("q", "k", "v", "scores"):
            s = getattr(self, name).summary()
            if name in self.head_sq:
                s["norm_per_head"] = self.head_sq[name].sqrt().tolist()
            out[name] = s
        return out


def attention_grads(inp: AttentionInputs, d_out: torch.Tensor, chunk: int | None = None,
                    max_elems: int = DEFAULT_CHUNK_ELEMS // 4, acc: AttentionGrads | None = None) -> AttentionGrads:
    """Recompute the attention chunk by chunk with autograd and push d_out (B, H, Nq, D) through it.

    For rows C of the queries: S = scores(q_C, k) (pre-softmax logits, bias included), P = softmax,
    O = P v; (dS, dq_C, dk_part, dv_part) = autograd.grad(O, (S, q_C, k, v), d_out_C). dk and dv sum
    over chunks. dS is counted over allowed (i, j) pairs. All in float32.
    """
    acc = acc or AttentionGrads()
    h = inp.q.shape[1]
    c = chunk or chunk_rows(inp, h, max_elems)
    with torch.enable_grad():
        k = inp.k.detach().float().requires_grad_(True)
        v = inp.v.detach().float().requires_grad_(True)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        for start in range(0, inp.q.shape[2], c):
            k_e, v_e = _expand_kv(k, h, None), _expand_kv(v, h, None)  # (B, H, Nk, D): per chunk, each
            # chunk's graph is freed by its autograd.grad
            q_c = inp.q[:, :, start : start + c].detach().float().requires_grad_(True)
            s, keep = scores_chunk(inp, q_c, k_e, start, None)
            o = _softmax(s, keep) @ v_e  # (B, H, C, D)
            ds, dq, dk_c, dv_c = torch.autograd.grad(
                o, (s, q_c, k, v), d_out[:, :, start : start + c].float(), retain_graph=False
            )
            dk += dk_c
            dv += dv_c
            with torch.no_grad():
                keep_e = keep.expand_as(ds)
                acc.scores.update(ds[keep_e])
                acc._head("scores", torch.where(keep_e, ds, torch.zeros_like(ds)))
                acc.q.update(dq)
                acc._head("q", dq)
    with torch.no_grad():
        acc.k.update(dk)
        acc.v.update(dv)
        acc._head("k", dk)
        acc._head("v", dv)
    return acc


__all__ = [
    "AttentionInputs", "HeadStats", "AttentionGrads", "HIST_EDGES", "N_BINS", "iter_probs", "recompute_probs",
    "attention_stats", "attention_grads", "entropy_rows", "normalized_entropy", "chunk_rows",
]
