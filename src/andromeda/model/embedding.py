"""Embedding providers: the interface and the default token (+ absolute position) embedding.

A provider maps tokens (B, N) and their positions (N,) to vectors (B, N, dim). Pass your own
module to `Andromeda(cfg, embedding=...)` to replace the default.
"""

from __future__ import annotations

import torch
from torch import nn

from andromeda.model.config import ModelConfig


class EmbeddingProvider(nn.Module):
    """Interface: forward(tokens (B, N) int64, positions (N,) int64) -> (B, N, dim)."""

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TokenEmbedding(EmbeddingProvider):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.token = nn.Embedding(cfg.num_tokens, cfg.dim)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.use_abs_pos_emb else None

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens)  # (B, N, dim)
        if self.pos is not None:  # Andromeda.check_positions has refused positions past max_seq_len
            x = x + self.pos(positions)[None]
        return x
