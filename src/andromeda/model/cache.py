"""Static KV cache: buffers allocated once for `max_len` positions, written in place.

It also holds the token-shift state (the last `shift_tokens` normalized rows of each shift
site), which cached decoding needs to shift features from the previous position.
"""

from __future__ import annotations

import torch

from andromeda.errors import ConfigError
from andromeda.model.config import ModelConfig


class KVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if batch <= 0 or max_len <= 0:
            raise ConfigError(f"cache: batch and max_len must be positive, got {batch}, {max_len}")
        shape = (cfg.depth, batch, cfg.n_kv_heads, max_len, cfg.dim_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H_kv, T, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self._shift: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + sum(t.nbytes for t in self._shift.values())

    def bytes_per_token(self) -> float:
        return (self.k.nbytes + self.v.nbytes) / (self.k.shape[1] * self.max_len)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, N, D) at the current length; return all keys/values so far."""
        n = k.shape[2]
        end = self.length + n
        if end > self.max_len:
            raise ConfigError(f"cache: {end} positions exceed the cache's max_len {self.max_len}; make a larger cache")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def shift_state(self, layer: int, site: str) -> torch.Tensor | None:
        return self._shift.get((layer, site))

    def set_shift_state(self, layer: int, site: str, state: torch.Tensor) -> None:
        self._shift[(layer, site)] = state

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
        self._shift.clear()
