"""Input-side probes: loss and perplexity per input class, sensitivity to a one-token change,
robustness to noise, and contextual ambiguity. All take `logits_fn`: tokens (B, N) -> logits (B, N, V).

  loss (nats)       mean over positions t of -ln P(x_{t+1} | x_<=t)
  perplexity        exp(loss);  bits_per_token = loss / ln 2
  KL(P || Q)        sum_v P(v) (ln P(v) - ln Q(v)), in float64 from float32 log-softmaxes
  JS(P, Q)          (KL(P || M) + KL(Q || M)) / 2 with M = (P + Q) / 2   (nats, <= ln 2)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from andromeda.diagnostics.inputs import SuiteInput, add_noise

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
ROW_CHUNK = 256  # positions whose log-softmax is taken in float64 at once
MAX_CURVE_POINTS = 256


def _logits(logits_fn: LogitsFn, tokens: list[int], device) -> torch.Tensor:
    with torch.no_grad():
        return logits_fn(torch.tensor([tokens], device=device))[0]  # (N, V)


def token_losses(logits: torch.Tensor, tokens: list[int] | torch.Tensor) -> torch.Tensor:
    """(N - 1,) float64 cross-entropy of position t predicting token t + 1."""
    tgt = torch.as_tensor(tokens, device=logits.device)[1:]
    out = []
    for s in range(0, logits.shape[0] - 1, ROW_CHUNK):
        lp = torch.log_softmax(logits[s : s + ROW_CHUNK][: len(tgt) - s].double(), dim=-1)
        out.append(-lp.gather(-1, tgt[s : s + ROW_CHUNK, None]).squeeze(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """(N,) KL(P_t || Q_t) per row, float64, chunked over rows."""
    out = []
    for s in range(0, p_logits.shape[0], ROW_CHUNK):
        lp = torch.log_softmax(p_logits[s : s + ROW_CHUNK].double(), -1)
        lq = torch.log_softmax(q_logits[s : s + ROW_CHUNK].double(), -1)
        out.append((lp.exp() * (lp - lq)).sum(-1).clamp(min=0))
    return torch.cat(out)


def js_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    out = []
    for s in range(0, p_logits.shape[0], ROW_CHUNK):
        lp = torch.log_softmax(p_logits[s : s + ROW_CHUNK].double(), -1)
        lq = torch.log_softmax(q_logits[s : s + ROW_CHUNK].double(), -1)
        lm = torch.logaddexp(lp, lq) - math.log(2)
        out.append((0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)).clamp(min=0))
    return torch.cat(out)


def downsample(values: list[float], n: int = MAX_CURVE_POINTS) -> tuple[list[float], list[float]]:
    """(x, y): the values, or bucket means (x = bucket centre) when there are more than n."""
    if len(values) <= n:
        return [float(i) for i in range(len(values))], list(values)
    xs, ys = [], []
    edges = [round(i * len(values) / n) for i in range(n + 1)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            xs.append((a + b - 1) / 2)
            ys.append(sum(values[a:b]) / (b - a))
    return xs, ys


# ---- loss per input class ----------------------------------------------------------------------------
def loss_metrics(losses: torch.Tensor) -> dict[str, float]:
    loss = float(losses.mean()) if losses.numel() else float("nan")
    return {"loss_nats": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2),
            "tokens": float(losses.numel())}


def class_losses(logits_fn: LogitsFn, items: list[SuiteInput], device) -> list[dict]:
    """One entry per (class, length): loss over every sample of it, and the mean novel-token share."""
    groups: dict[tuple[str, int], list[SuiteInput]] = {}
    for it in items:
        groups.setdefault((it.cls, it.length), []).append(it)
    out = []
    for (cls, length), its in groups.items():
        losses = torch.cat([token_losses(_logits(logits_fn, it.tokens, device), it.tokens) for it in its])
        m = loss_metrics(losses)
        m["novel_token_frac"] = sum(it.info.get("novel_token_frac", 0.0) for it in its) / len(its)
        out.append({"input_class": cls, "seq_len": length, "samples": len(its), **m})
    return out


# ---- sensitivity ---------------------------------------------------------------------------------------
def sensitivity(logits_fn: LogitsFn, tokens: list[int], position: int, space: int, device,
                seed: int = 0, threshold: float = 1e-3) -> dict:
    """Replace token `position` with another; KL(P_orig || P_changed) of the next-token distribution at
    every position t >= position (and, as a causality check, the largest KL at t < position)."""
    if not 0 <= position < len(tokens):
        raise ValueError(f"sensitivity: position {position} is outside 0..{len(tokens) - 1}")
    rng = random.Random(f"sensitivity:{position}:{seed}")
    new = rng.randrange(space - 1)
    new += new >= tokens[position]
    changed = list(tokens)
    changed[position] = new
    a, b = _logits(logits_fn, tokens, device), _logits(logits_fn, changed, device)
    kl = kl_rows(a, b)
    after = kl[position:].tolist()
    before = kl[:position]
    above = [i for i, v in enumerate(after) if v > threshold]
    xs, ys = downsample(after)
    return {
        "position": position,
        "kl_at_position_nats": after[0],
        "kl_mean_nats": sum(after) / len(after),
        "kl_max_nats": max(after),
        "kl_last_nats": after[-1],
        "kl_before_max_nats": float(before.max()) if before.numel() else 0.0,
        "reach_tokens": float(above[-1]) if above else 0.0,
        "offsets": xs,
        "kl_curve": ys,
    }


# ---- robustness -------------------------------------------------------------------------------------------
def robustness(logits_fn: LogitsFn, sequences: list[list[int]], kind: str, rate: float, space: int, device,
               seed: int = 0) -> dict:
    """Loss of the noisy sequences: over all targets, and over targets that are original tokens."""
    all_l, clean_l = [], []
    changed = 0
    total = 0
    for s, toks in enumerate(sequences):
        noisy, orig = add_noise(toks, kind, rate, space, seed * 1000 + s)
        losses = token_losses(_logits(logits_fn, noisy, device), noisy)
        all_l.append(losses)
        keep = torch.tensor(orig[1:], dtype=torch.bool, device=losses.device)
        clean_l.append(losses[keep])
        changed += len(toks) - len(noisy) if kind == "delete" else sum(not o for o in orig)  # edits
        total += len(toks)
    m = loss_metrics(torch.cat(all_l))
    clean = torch.cat(clean_l)
    m["clean_target_loss_nats"] = float(clean.mean()) if clean.numel() else float("nan")
    m["edit_frac"] = changed / total if total else 0.0  # edits per original token
    return {"noise": kind, "rate": rate, **m}


# ---- contextual ambiguity ------------------------------------------------------------------------------
def ambiguity(logits_fn: LogitsFn, pairs: list[tuple[list[int], list[int], list[int], str]], device,
              max_len: int | None = None) -> list[dict]:
    """For each (context A, context B, span): KL and JS between the next-token predictions on the span
    after A and after B, and the span's loss after each context."""
    out = []
    for ctx_a, ctx_b, span, label in pairs:
        if max_len is not None:
            keep = max(1, max_len - len(span))
            ctx_a, ctx_b = ctx_a[-keep:], ctx_b[-keep:]
        la = _logits(logits_fn, ctx_a + span, device)
        lb = _logits(logits_fn, ctx_b + span, device)
        ra = slice(len(ctx_a) - 1, len(ctx_a) - 1 + len(span))  # rows that predict the span's tokens
        rb = slice(len(ctx_b) - 1, len(ctx_b) - 1 + len(span))
        pa, pb = la[ra], lb[rb]
        kl = kl_rows(pa, pb)
        loss_a = token_losses(la, ctx_a + span)[ra]
        loss_b = token_losses(lb, ctx_b + span)[rb]
        out.append({
            "pair": label,
            "kl_mean_nats": float(kl.mean()),
            "kl_first_nats": float(kl[0]),
            "js_mean_nats": float(js_rows(pa, pb).mean()),
            "span_loss_a_nats": float(loss_a.mean()),
            "span_loss_b_nats": float(loss_b.mean()),
            "span_tokens": float(len(span)),
        })
    return out


__all__ = [
    "token_losses", "kl_rows", "js_rows", "loss_metrics", "class_losses", "sensitivity", "robustness",
    "ambiguity", "downsample",
]
