"""Attention: projections, MHA/GQA/MQA, QK-norm, rotary/xPos, then a backend kernel."""

from __future__ import annotations

import torch
from torch import nn

from andromeda.errors import UnsupportedError
from andromeda.model import backends
from andromeda.model.config import ModelConfig
from andromeda.model.norms import QKNorm
from andromeda.model.positional import XPos, apply_rotary, scale_rotated

# cos, sin (N, rot_dim) and the xPos of the same positions (positional.XPos) or None
Rope = tuple[torch.Tensor, torch.Tensor, "XPos | None"]


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

    def _linear(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projections: q (B, N, H, D) and k (B, N, H_kv, D), views of the linear layers' outputs; v (B, H_kv,
        N, D)."""
        b, n, _ = x.shape
        d = self.cfg.dim_head
        q = self.to_q(x).view(b, n, -1, d)
        k = self.to_k(x).view(b, n, -1, d)
        return q, k, self.to_v(x).view(b, n, -1, d).transpose(1, 2)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k and v (B, H_kv, N, D) after QK-norm, before rotary."""
        q, k, v = self._linear(x)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def math_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The projections' output dtype: autocast's where it is on, else the weights'."""
        dev = x.device.type
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.to_q.weight.dtype

    def _fuses(self, backend, rope: Rope | None) -> bool:
        """Whether QK-norm, rotary and xPos run as one kernel each way (backends/qk_rope.py): where the backend
        is our Triton kernel, its TritonTuning.fused_qk is on, and there is one of them to do."""
        return bool(getattr(backend, "fused_qk", False)) and (self.q_norm is not None or rope is not None)

    def _project_fused(self, q: torch.Tensor, k: torch.Tensor, rope: Rope | None, want_norms: bool):
        """`_project` and `_rotate` of the projections q (B, N, H, D), k (B, N, H_kv, D) in one kernel each:
        q (B, H, N, D), k (B, H_kv, N, D), and with `want_norms` the norms of `_wants_norms` (of the QK-normed
        vectors, before rotary and xPos), else None."""
        from andromeda.model.backends.qk_rope import qk_rope

        cos, sin, xpos = rope if rope is not None else (None, None, None)
        norm = self.q_norm is not None
        eps = self.q_norm.eps if norm else 0.0

        def gain(m):
            return None if m is None else m.gain  # (H, 1, D) or None: qk_rope takes QKNorm's own

        q, qn = qk_rope(q, gain(self.q_norm), cos, sin, None if xpos is None else xpos.scale, norm=norm, eps=eps,
                        want_norms=want_norms)
        k, kn = qk_rope(k, gain(self.k_norm), cos, sin, None if xpos is None else xpos.inv, norm=norm, eps=eps,
                        want_norms=want_norms)
        return q, k, ((qn, kn) if want_norms else None)

    def _rotate(self, q: torch.Tensor, k: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary on q (B, H, N, D) and k (B, H_kv, N, D); with xPos, queries scaled about their own block's
        anchor and keys anchored as the KV cache stores them (positional.XPos)."""
        if rope is None:
            return q, k
        cos, sin, xpos = rope
        return (apply_rotary(q, cos, sin, None if xpos is None else xpos.scale),
                apply_rotary(k, cos, sin, None if xpos is None else xpos.inv))

    def project_qk(
        self, x: torch.Tensor, rope: Rope | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, N, D), k and v (B, H_kv, N, D) after QK-norm and rotary/xPos (`_rotate`). For positions in
        one anchor block, q . k are the model's scores (what diagnostics read)."""
        q, k, v = self._project(x)
        q, k = self._rotate(q, k, rope)
        return q, k, v

    @staticmethod
    def _wants_norms(backend, xpos: XPos | None, alibi: bool) -> bool:
        """For a backend that skips far keys of ALiBi heads by a bound on the scores (`score_norms`), with xPos:
        the norms of q (B, H, N) and of every key (B, H_kv, T) before rotary and xPos. Pair p of q_i . k_j
        carries zeta_p^((i - j)/base) <= 1 for j <= i and rotations keep pair norms, so |q_i . k_j| <=
        |q_i| |k_j| for these vectors, far below the bound from the scaled ones (triton_flash_kernels._reach).
        A cache keeps its keys' norms (KVCache.key_norms)."""
        return xpos is not None and alibi and bool(getattr(backend, "score_norms", False))

    @staticmethod
    def _norms(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 norms of q (B, H, N, D) and k (B, H_kv, N, D) rows: a bound, no gradient."""
        return (torch.linalg.vector_norm(q.detach(), dim=-1, dtype=torch.float32),
                torch.linalg.vector_norm(k.detach(), dim=-1, dtype=torch.float32))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, xpos: XPos | None, key_first: int,
                alibi_slopes: torch.Tensor | None, backend, norms=None) -> torch.Tensor:
        """q (B, H, N, D), the last N of the keys k, v (B, H_kv, T, D) of positions key_first ... -> (B, H, N, D).

        With xPos over several anchor blocks, each block's queries attend to the keys up to their last position,
        those keys taken to the block's anchor (XPos.rebase); keys of one block need nothing. `norms`: the
        (q, keys) norms of `_wants_norms`, passed on to the backend."""
        kw = dict(causal=self.cfg.causal, scale=self.cfg.attn_scale, alibi_slopes=alibi_slopes)
        blocks = xpos.blocks() if xpos is not None else [(0, q.shape[2], 0)]
        if len(blocks) == 1 and (xpos is None or key_first // xpos.period == blocks[0][2]):  # one block of keys
            return backend(q, k, v, **kw) if norms is None else backend(q, k, v, **kw, norms=norms)
        if not self.cfg.causal:
            raise UnsupportedError(f"attention: xPos without a causal mask is unbounded past one anchor block "
                                   f"({xpos.period} positions); shorten the input or use a causal model")
        n, t = q.shape[2], k.shape[2]
        outs = []
        for a, b, blk in blocks:
            end = t - (n - b)  # the keys through this block's last query
            fac = xpos.rebase(key_first, end, blk)
            kb = k[:, :, :end] if fac is None else scale_rotated(k[:, :, :end], fac)
            if norms is not None:
                kw["norms"] = (norms[0][:, :, a:b], norms[1][:, :, :end])
            outs.append(backend(q[:, :, a:b], kb, v[:, :, :end], **kw))
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
        attend = getattr(cache, "attend", None)
        xpos = None if rope is None else rope[2]
        backend = None if attend is not None else self.backend(x.device, self.math_dtype(x))
        want = backend is not None and self._wants_norms(backend, xpos, alibi_slopes is not None)
        if backend is not None and self._fuses(backend, rope):
            q, k, v = self._linear(x)
            q, k, norms = self._project_fused(q, k, rope, want)
        else:
            q, k, v = self._project(x)
            norms = self._norms(q, k) if want else None
            q, k = self._rotate(q, k, rope)
        if attend is not None:  # a static-shape decode step (model/decode.py): its own masked attention
            out = attend(layer, q, k, v, self.cfg.attn_scale)  # (B, H, 1, D)
        else:
            key_first = xpos.first if xpos is not None else 0
            if cache is not None:
                if norms is not None:
                    kn = cache.key_norms(layer, norms[1])
                    norms = None if kn is None else (norms[0], kn)
                k, v = cache.update(layer, k, v)  # (B, H_kv, N_past + N, D)
                key_first = cache.start
            runs = getattr(cache, "query_runs", None)
            if runs is None:
                out = self._attend(q, k, v, xpos, key_first, alibi_slopes, backend, norms)  # (B, H, N, D)
            else:  # a context-parallel prefill: rows [a, b) of q are positions whose keys are k[:, :, :e]
                out = torch.cat([self._attend(q[:, :, a:b], k[:, :, :e], v[:, :, :e], xp, key_first, alibi_slopes,
                                              backend, None if norms is None else (norms[0][:, :, a:b],
                                                                                   norms[1][:, :, :e]))
                                 for a, b, e, xp in runs], dim=2)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))
