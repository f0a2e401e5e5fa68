"""Attention: projections, MHA/GQA/MQA, QK-norm, rotary/xPos, then a backend kernel."""

from __future__ import annotations

import torch
from torch import nn

from andromeda.model import backends
from andromeda.model.config import ModelConfig
from andromeda.model.norms import QKNorm
from andromeda.model.positional import RelativeXPos, apply_rotary

# cos, sin (N, rot_dim) and xPos: None, a query scale table (N, rot_dim) whose inverse scales keys (a fixed
# centre: cached paths), or a RelativeXPos (a whole sequence without a cache: exact at any position)
Rope = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | RelativeXPos | None"]


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

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k and v (B, H_kv, N, D) after QK-norm, before rotary."""
        b, n, _ = x.shape
        d = self.cfg.dim_head
        q = self.to_q(x).view(b, n, -1, d).transpose(1, 2)  # (B, H, N, D)
        k = self.to_k(x).view(b, n, -1, d).transpose(1, 2)  # (B, H_kv, N, D)
        v = self.to_v(x).view(b, n, -1, d).transpose(1, 2)  # (B, H_kv, N, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def project_qk(
        self, x: torch.Tensor, rope: Rope | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k and v (B, H_kv, N, D) after QK-norm and rotary/xPos (a RelativeXPos relative to the
        first position, exact while the sequence fits one of its chunks)."""
        q, k, v = self._project(x)
        if rope is not None:
            cos, sin, xpos = rope
            if isinstance(xpos, RelativeXPos):
                n = xpos.length
                q = apply_rotary(q, cos, sin, xpos.scale(0, n, 0))
                k = apply_rotary(k, cos, sin, xpos.scale(0, n, 0, keys=True))
            else:
                q = apply_rotary(q, cos, sin, xpos)
                k = apply_rotary(k, cos, sin, None if xpos is None else xpos.reciprocal())
        return q, k, v

    def _attend_chunks(self, x: torch.Tensor, rope: Rope, alibi_slopes: torch.Tensor | None) -> torch.Tensor:
        """Causal attention with xPos relative to each chunk of queries (positional.RelativeXPos): queries
        [a, b) against keys [0, b), the chunk's queries being the last b - a of them. (B, H, N, D)."""
        cos, sin, xpos = rope
        q, k, v = self._project(x)
        backend = self.backend(x.device, q.dtype)
        outs = []
        for a, b in xpos.bounds():
            qc = apply_rotary(q[:, :, a:b], cos[a:b], sin[a:b], xpos.scale(a, b, a))
            kc = apply_rotary(k[:, :, :b], cos[:b], sin[:b], xpos.scale(0, b, a, keys=True))
            outs.append(backend(qc, kc, v[:, :, :b], causal=True, scale=self.cfg.attn_scale,
                                alibi_slopes=alibi_slopes))
        return torch.cat(outs, dim=2)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        alibi_slopes: torch.Tensor | None,
        cache=None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        if rope is not None and isinstance(rope[2], RelativeXPos) and rope[2].length > rope[2].chunk:
            out = self._attend_chunks(x, rope, alibi_slopes)  # (B, H, N, D)
            return self.to_out(out.transpose(1, 2).reshape(b, n, -1))
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
