"""Pieces several scenarios' run code shares: random inputs, FLOP metrics, train steps (typed config
fields are in schema/fields.py and scenarios/config/)."""

from __future__ import annotations

import torch

from andromeda.measure.flops import achieved_tflops, mfu


def random_tokens(bundle, batch: int, seq: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vocab = min(bundle.facts.vocab, 256) if bundle.facts.vocab >= 256 else bundle.facts.vocab
    return torch.randint(0, vocab, (batch, seq), generator=g).to(device)


def flop_metrics(flops: float, seconds: float, peak_tflops: float | None) -> dict[str, float]:
    out = {"flops": float(flops), "tflops": achieved_tflops(flops, seconds)}
    u = mfu(flops, seconds, peak_tflops)
    if u is not None:
        out["mfu"] = u
    return out


def zero_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def check_length(bundle, seq: int) -> str | None:
    """A skip reason when the sequence is past what the model can represent, else None."""
    limit = bundle.facts.max_seq_len
    if seq > limit and not bundle.info.get("extrapolates", False):
        return f"seq_len {seq} exceeds the model's max_seq_len {limit}"
    return None
