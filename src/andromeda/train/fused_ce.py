"""Fused, chunked LM head + cross-entropy: the mean loss of `hidden @ weight.T` against labels without the
float32 logits of the whole batch ever existing.

The rows (tokens) are taken a chunk at a time. For each chunk the forward computes its logits (in the inputs'
dtype, as the unfused head does), their log-sum-exp and loss in float32, and, when gradients are wanted, the
gradient of the chunk's logits (softmax - one-hot, over the number of scored rows) and from it the chunk's
gradient of the hidden states and its share of the weight's gradient (accumulated in float32). Backward only
scales those by the incoming gradient. So the head's matmuls are the unfused step's three (logits, grad
hidden, grad weight), none is recomputed (model FLOPs = hardware FLOPs), and the largest temporary is one
chunk's logits: chunk_rows x vocab float32 (4096 x 50,432 = 0.8 GB) instead of tokens x vocab (32K tokens:
6.6 GB, plus its bf16 copy, the saved log-softmax and its gradient in the unfused step).

Plain torch (CPU and CUDA, torch.compile-able); no host synchronization (the count of scored rows stays on
the device). The head weight may be the (tied) embedding weight: autograd adds the two gradients. Under
autocast the inputs are cast to the autocast dtype first, as nn.Linear would. What it saves for backward is
the gradient of the hidden states (tokens x dim, the inputs' dtype) and of the weight (float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from andromeda.errors import ConfigError, UnsupportedError

IGNORE_INDEX = -100
CHUNK_ROWS = 4096


def _chunk(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, ignore_index: int, inv_n: torch.Tensor | None):
    """(loss sum over the chunk's scored rows (float32), grad of its logits in h's dtype or None).

    h (R, dim), w (V, dim), y (R,); inv_n: 1 / the batch's scored rows (a device scalar), None = no gradient.
    """
    # (R, V): the head's output rounded to the inputs' dtype, then float32 (float64 inputs stay float64)
    logits = (h @ w.T).to(torch.promote_types(h.dtype, torch.float32))
    lse = torch.logsumexp(logits, dim=-1)  # (R,)
    keep = y != ignore_index  # (R,)
    safe = torch.where(keep, y, torch.zeros_like(y))
    target = logits.gather(1, safe[:, None])[:, 0]  # (R,)
    loss_sum = torch.where(keep, lse - target, torch.zeros_like(lse)).sum()
    if inv_n is None:
        return loss_sum, None
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    probs.scatter_add_(1, safe[:, None], -keep.to(probs.dtype)[:, None])  # minus the one-hot of scored rows
    probs.mul_((keep.to(probs.dtype) * inv_n)[:, None])  # unscored rows contribute nothing
    return loss_sum, probs.to(h.dtype)  # (R, V)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_rows, chunk_fn):
        rows = hidden.shape[0]
        n = (labels != ignore_index).sum()  # scored rows, on the device
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # the loss's and the weight gradient's dtype
        inv_n = 1.0 / n.clamp(min=1).to(acc) if (want_h or want_w) else None
        grad_h = torch.empty_like(hidden) if want_h else None  # (T, dim)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        for a in range(0, rows, chunk_rows):
            h = hidden[a:a + chunk_rows]
            part, d = chunk_fn(h, weight, labels[a:a + chunk_rows], ignore_index, inv_n)
            loss_sum = loss_sum + part
            if grad_h is not None:
                torch.mm(d, weight, out=grad_h[a:a + chunk_rows])  # (R, dim)
            if grad_w is not None:
                grad_w.add_(d.T @ h)  # (V, dim), summed in float32
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss_sum / n  # nan when no row is scored, like F.cross_entropy

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * g.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * g).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


_compiled: dict = {}


def compiled_chunk(backend="inductor"):
    """_chunk under torch.compile (its pointwise work fused; one graph per chunk shape), made once per backend."""
    if backend not in _compiled:
        _compiled[backend] = torch.compile(_chunk, dynamic=False, backend=backend)
    return _compiled[backend]


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = IGNORE_INDEX, chunk_rows: int = CHUNK_ROWS,
                         compiled: bool = False, backend="inductor") -> torch.Tensor:
    """Mean cross-entropy of the logits hidden @ weight.T against labels, chunk_rows rows at a time.

    hidden (..., dim), weight (V, dim), labels (...) int64 with `ignore_index` where nothing is scored. Equal to
    F.cross_entropy(F.linear(hidden, weight).float().flatten(0, -2), labels.flatten(), ignore_index=...).
    compiled: run each chunk's work through torch.compile (compiled_chunk(backend)).
    """
    if chunk_rows < 1:
        raise ConfigError(f"fused cross-entropy: chunk_rows must be >= 1, got {chunk_rows}")
    if hidden.shape[:-1] != labels.shape or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ConfigError(f"fused cross-entropy: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and "
                          f"labels {tuple(labels.shape)} do not fit (hidden (..., dim), weight (V, dim), labels (...))")
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):  # what nn.Linear does under autocast
        dtype = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    fn = compiled_chunk(backend) if compiled else _chunk
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                         ignore_index, chunk_rows, fn)


def next_token_labels(tokens: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, N) labels for causal LM: position t is scored against tokens[t + 1], the last position not at all.

    Keeping all N positions (rather than slicing the hidden states to N - 1) keeps the hidden states a view."""
    return torch.cat([tokens[:, 1:], tokens.new_full((tokens.shape[0], 1), ignore_index)], dim=1)


def hidden_and_head(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The final hidden states (B, N, dim), after the final norm, and the LM head's weight (V, dim).

    Andromeda: forward(logits="none") then final_norm, head.weight. A transformers causal LM: its base model's
    last_hidden_state and get_output_embeddings().weight. Refused: a head with a bias, logit soft-capping or
    scaling (the loss would differ), a model wrapped in DistributedDataParallel (its forward must run).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise UnsupportedError("fused_ce: a DistributedDataParallel model must run its own forward; "
                               "use fused_ce: false")
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and hasattr(model, "final_norm"):
        if head.bias is not None:
            raise UnsupportedError("fused_ce: the LM head has a bias; use fused_ce: false")
        return model.final_norm(model(tokens, logits="none")), head.weight
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if isinstance(out_emb, nn.Linear) and isinstance(base, nn.Module) and base is not model:
        cfg = getattr(model, "config", None)
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            if getattr(cfg, key, None) not in (None, 1, 1.0):
                raise UnsupportedError(f"fused_ce: the model's config sets {key}; use fused_ce: false")
        if out_emb.bias is not None:
            raise UnsupportedError("fused_ce: the LM head has a bias; use fused_ce: false")
        return base(input_ids=tokens, use_cache=False).last_hidden_state, out_emb.weight
    raise UnsupportedError(f"fused_ce: {type(model).__name__} is neither an Andromeda model nor a transformers causal "
                           "LM with a linear output embedding; use fused_ce: false")


def fused_lm_loss(model: nn.Module, tokens: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                  chunk_rows: int = CHUNK_ROWS, compiled: bool = False, backend="inductor") -> torch.Tensor:
    """Mean next-token cross-entropy of `model` on tokens (B, N), the head and loss fused (linear_cross_entropy):
    the same value as lm_loss(model(tokens), tokens)."""
    hidden, weight = hidden_and_head(model, tokens)
    return linear_cross_entropy(hidden, weight, next_token_labels(tokens, ignore_index), ignore_index=ignore_index,
                                chunk_rows=chunk_rows, compiled=compiled, backend=backend)


def reference_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The unfused computation linear_cross_entropy replaces: full logits, then F.cross_entropy in float32."""
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=ignore_index)


__all__ = ["linear_cross_entropy", "fused_lm_loss", "next_token_labels", "hidden_and_head", "reference_loss",
           "compiled_chunk", "CHUNK_ROWS", "IGNORE_INDEX"]
