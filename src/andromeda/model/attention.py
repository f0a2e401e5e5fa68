"""Attention: projections, MHA/GQA/MQA, QK-norm, rotary/xPos, then a backend kernel."""

from __future__ import annotations

import torch
from torch import nn

from andromeda.model import backends
from andromeda.model.config import ModelConfig
from andromeda.model.norms import QKNorm
from andromeda.model.positional import apply_rotary

Rope = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # cos, sin, xpos scale: (N, rot_dim)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, hkv, d = cfg.heads, cfg.n_kv_heads, cfg.dim_head
        self.to_q = nn.Linear(cfg.dim, h * d, bias=cfg.attn_bias)
        self.to_k = nn.Linear(cfg.dim, hkv * d, bias=cfg.attn_bias)
        self.to_v = nn.Linear(cfg.dim, hkv * d, bias=cfg.attn_bias)
        self.to_out = nn.Linear(h * d, cfg.dim, bias=cfg.attn_bias)
        self.q_norm = QKNorm(h, d, cfg.qk_norm_dim_scale) if cfg.qk_norm else None
        self.k_norm = QKNorm(hkv, d, cfg.qk_norm_dim_scale) if cfg.qk_norm else None
        self._backends: dict[tuple[str, torch.dtype], backends.Backend] = {}

    def backend(self, device: torch.device, dtype: torch.dtype) -> backends.Backend:
        key = (device.type, dtype)
        if key not in self._backends:
            spec = backends.AttentionSpec.from_model(self.cfg, dtype)
            self._backends[key] = backends.select(spec, device, self.cfg.attn_backend)
        return self._backends[key]

    def project_qk(
        self, x: torch.Tensor, rope: Rope | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k and v (B, H_kv, N, D) after QK-norm and rotary/xPos."""
        b, n, _ = x.shape
        d = self.cfg.dim_head
        q = self.to_q(x).view(b, n, -1, d).transpose(1, 2)  # (B, H, N, D)
        k = self.to_k(x).view(b, n, -1, d).transpose(1, 2)  # (B, H_kv, N, D)
        v = self.to_v(x).view(b, n, -1, d).transpose(1, 2)  # (B, H_kv, N, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin, xscale = rope
            q = apply_rotary(q, cos, sin, xscale)
            k = apply_rotary(k, cos, sin, None if xscale is None else xscale.reciprocal())
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        alibi_slopes: torch.Tensor | None,
        cache=None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.project_qk(x, rope)
        attend = getattr(cache, "attend", None)
        if attend is not None:  # a static-shape decode step (model/decode.py): its own masked attention
            out = attend(layer, q, k, v, self.cfg.attn_scale)  # (B, H, 1, D)
        else:
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, H_kv, N_past + N, D)
            out = self.backend(x.device, q.dtype)(
                q, k, v, causal=self.cfg.causal, scale=self.cfg.attn_scale, alibi_slopes=alibi_slopes
            )  # (B, H, N, D)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))
