"""FeedForward, TokenShift and the transformer Block (pre-norm | DeepNorm | parallel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from andromeda.model.attention import Attention, Rope
from andromeda.model.config import ModelConfig
from andromeda.model.norms import deepnorm_alpha, make_norm

_ACT = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = _ACT[cfg.ff_activation]
        self.w_in = nn.Linear(cfg.dim, cfg.ff_hidden, bias=cfg.ff_bias)
        self.w_gate = nn.Linear(cfg.dim, cfg.ff_hidden, bias=cfg.ff_bias) if cfg.ff_glu else None
        self.w_out = nn.Linear(cfg.ff_hidden, cfg.dim, bias=cfg.ff_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.w_in(x))  # (B, N, F)
        if self.w_gate is not None:
            h = h * self.w_gate(x)
        return self.w_out(h)


class TokenShift(nn.Module):
    """Split features into s+1 chunks; chunk k takes the features of the position k steps back.

    Zeros enter at the start; features past (s+1)*(dim//(s+1)) are left in place. `prev`, the
    last s input rows of earlier positions (B, s, dim), lets cached decoding continue the shift.
    """

    def __init__(self, shifts: int, dim: int):
        super().__init__()
        self.shifts = shifts
        self.chunk = dim // (shifts + 1)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        s, c = self.shifts, self.chunk
        if prev is None:
            prev = x.new_zeros(b, s, d)
        xx = torch.cat([prev, x], dim=1)  # (B, s + N, dim)
        parts = [xx[:, s - k : s - k + n, k * c : (k + 1) * c] for k in range(s + 1)]
        parts.append(x[..., (s + 1) * c :])
        return torch.cat(parts, dim=-1), xx[:, -s:]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.alpha = deepnorm_alpha(cfg.depth) if cfg.deepnorm else 1.0
        if cfg.parallel_block:
            self.norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)  # one norm feeds both branches
        else:
            self.attn_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
            self.ff_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.shift = TokenShift(cfg.shift_tokens, cfg.dim) if cfg.shift_tokens else None

    def _shift(self, x: torch.Tensor, cache, layer: int, site: str) -> torch.Tensor:
        if self.shift is None:
            return x
        if cache is None:
            return self.shift(x)[0]
        exchange = getattr(cache, "shift_exchange", None)
        if exchange is not None:  # a context-parallel prefill: x holds runs of positions [a, b), each shifted after
            runs = exchange(layer, site, x, self.shift.shifts)  # the rows before it, from the rank that holds them
            return torch.cat([self.shift(x[:, a:b], prev)[0] for a, b, prev in runs], dim=1)
        out, state = self.shift(x, cache.shift_state(layer, site))
        cache.set_shift_state(layer, site, state)
        return out

    def forward(self, x: torch.Tensor, rope: Rope | None, slopes: torch.Tensor | None, cache=None,
                layer: int = 0) -> torch.Tensor:
        def attn(h):
            return self.drop(self.attn(self._shift(h, cache, layer, "attn"), rope, slopes, cache, layer))

        def ff(h):
            return self.drop(self.ff(self._shift(h, cache, layer, "ff")))

        if self.cfg.parallel_block:  # x + attn(LN(x)) + ff(LN(x)); one shift feeds both branches
            h = self._shift(self.norm(x), cache, layer, "attn")
            return x + self.drop(self.attn(h, rope, slopes, cache, layer)) + self.drop(self.ff(h))
        if self.cfg.deepnorm:  # post-norm: x <- LN(alpha * x + f(x))
            x = self.attn_norm(self.alpha * x + attn(x))
            return self.ff_norm(self.alpha * x + ff(x))
        x = x + attn(self.attn_norm(x))
        return x + ff(self.ff_norm(x))
