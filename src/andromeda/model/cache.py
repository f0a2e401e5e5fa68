"""Static KV cache: buffers allocated once for `max_len` positions, written in place.

quant="int8" or "int4" stores keys and values as symmetric per-group integer codes (groups of
`group_size` features, one float32 scale each; int4 packs two codes a byte) and dequantizes the
filled prefix on read. Keys arrive with xPos anchored (positional.XPos: rotated features scaled by up to
3.5^(P / 2 base) either way, a spread one absmax per group would flatten); a quantized cache stores them
rotated but unscaled and anchors them again on read. `window` > 0 keeps the most recent `window` positions
in full precision as well (a ring buffer), so the newest tokens are exact.

`start` > 0 places the cached sequence at positions start, start + 1, ... with no earlier context (as
`Andromeda.forward(start=)` does without a cache): slot t holds position start + t.

It also holds the token-shift state (the last `shift_tokens` normalized rows of each shift
site), which cached decoding needs to shift features from the previous position.
"""

from __future__ import annotations

import torch

from andromeda.errors import ConfigError
from andromeda.model.config import ModelConfig
from andromeda.model.positional import XPos, anchored_xpos, scale_rotated
from andromeda.model.quant import dequantize, quantize

QUANT_BITS = {"none": None, "int8": 8, "int4": 4}


class KVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        quant: str = "none",
        group_size: int = 64,
        window: int = 0,
        start: int = 0,
    ):
        if batch <= 0 or max_len <= 0:
            raise ConfigError(f"cache: batch and max_len must be positive, got {batch}, {max_len}")
        if start < 0:
            raise ConfigError(f"cache.start: the first position must be >= 0, got {start}")
        self.start = start
        if quant not in QUANT_BITS:
            raise ConfigError(f"cache.quant: '{quant}' is unknown; allowed: {', '.join(QUANT_BITS)}")
        self.bits = QUANT_BITS[quant]
        self.quant, self.dtype, self.max_len, self.length = quant, dtype, max_len, 0
        d = cfg.dim_head
        self.group = min(group_size, d)
        if self.bits is not None and (group_size <= 0 or d % self.group or self.group % 2):
            raise ConfigError(f"cache.group_size: must be even and divide dim_head ({d}), got {group_size}")
        if window < 0:
            raise ConfigError(f"cache.window: must be >= 0, got {window}")
        self.window = window if self.bits is not None else 0
        lead = (cfg.depth, batch, cfg.n_kv_heads, max_len)  # (L, B, H_kv, T, ...)
        if self.bits is None:
            self.k = torch.zeros(*lead, d, device=device, dtype=dtype)  # (L, B, H_kv, T, D)
            self.v = torch.zeros(*lead, d, device=device, dtype=dtype)
            self._buffers = [self.k, self.v]
        else:
            code_d, code_t = (d, torch.int8) if self.bits == 8 else (d // 2, torch.uint8)
            self.kq = torch.zeros(*lead, code_d, device=device, dtype=code_t)
            self.vq = torch.zeros(*lead, code_d, device=device, dtype=code_t)
            self.ks = torch.zeros(*lead, d // self.group, device=device, dtype=torch.float32)
            self.vs = torch.zeros(*lead, d // self.group, device=device, dtype=torch.float32)
            self._buffers = [self.kq, self.vq, self.ks, self.vs]
            if self.window:
                wshape = (cfg.depth, batch, cfg.n_kv_heads, self.window, d)
                self.kw = torch.zeros(wshape, device=device, dtype=dtype)
                self.vw = torch.zeros(wshape, device=device, dtype=dtype)
                self._buffers += [self.kw, self.vw]
        self._shift: dict[tuple[int, str], torch.Tensor] = {}
        # quantized with xPos: the scales of every slot's position, to store keys unscaled (built on first use)
        self._xpos_args = (cfg.rot_dim, cfg.xpos_scale_base, cfg.pos_interpolation_factor) \
            if self.bits is not None and cfg.use_rotary and cfg.rotary_xpos else None
        self._xpos: XPos | None = None
        self._key_norms: torch.Tensor | None = None  # (L, B, H_kv, T) float32, on first use (key_norms)
        self._normed = 0  # positions whose key norms are stored (a decode step writes keys without them)

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer the cache allocated (keys, values, scales, window, shift state, key norms)."""
        norms = 0 if self._key_norms is None else self._key_norms.nbytes
        return sum(t.nbytes for t in self._buffers) + sum(t.nbytes for t in self._shift.values()) + norms

    def bytes_per_token(self) -> float:
        """Key/value bytes per cached token (per sequence), over all layers."""
        return sum(t.nbytes for t in self._buffers) / (self._buffers[0].shape[1] * self.max_len)

    def filled_bytes(self) -> int:
        """Bytes that hold the positions written so far (the window counts whole once used)."""
        per_pos = sum(t[:, :, :, :1].nbytes for t in self._buffers[:4 if self.bits else 2])
        extra = sum(t.nbytes for t in self._buffers[4:]) if self.window and self.length else 0
        return per_pos * self.length + extra

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, N, D) at the current length; return all keys/values so far."""
        n = k.shape[2]
        start, end = self.length, self.length + n
        if end > self.max_len:
            raise ConfigError(f"cache: {end} positions exceed the cache's max_len {self.max_len}; make a larger cache")
        if self.bits is None:
            self.k[layer, :, :, start:end] = k
            self.v[layer, :, :, start:end] = v
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        xpos = self._slot_xpos(k.device)
        plain = k if xpos is None else scale_rotated(k, xpos.scale[start:end])  # un-anchored: xPos-free keys
        for src, codes, scales in ((plain, self.kq, self.ks), (v, self.vq, self.vs)):
            q, s = quantize(src, self.bits, self.group)
            codes[layer, :, :, start:end] = q
            scales[layer, :, :, start:end] = s
        keys = dequantize(self.kq[layer, :, :, :end], self.ks[layer, :, :, :end], self.bits, self.group, k.dtype)
        vals = dequantize(self.vq[layer, :, :, :end], self.vs[layer, :, :, :end], self.bits, self.group, v.dtype)
        if xpos is not None:
            keys = scale_rotated(keys, xpos.inv[:end])
        if self.window:
            keys, vals = self._window(layer, k, v, start, end, keys, vals)
        return keys, vals

    def key_norms(self, layer: int, norms: torch.Tensor) -> torch.Tensor | None:
        """Store the norms (B, H_kv, N) of the keys this update writes (before rotary and xPos: an attention
        kernel's bound on scores, model.attention._wants_norms) at the current length; return those of all
        keys so far (B, H_kv, N_past + N), or None when some earlier keys were written without theirs (by a
        static decode step): the kernel then bounds by the stored keys. Call beside `update`."""
        if self._normed != self.length:
            return None
        if self._key_norms is None:
            lead = self._buffers[0].shape[:4]
            self._key_norms = torch.zeros(lead, device=norms.device, dtype=torch.float32)
        end = self.length + norms.shape[2]
        self._key_norms[layer, :, :, self.length : end] = norms
        if layer == self._key_norms.shape[0] - 1:
            self._normed = end
        return self._key_norms[layer, :, :, :end]

    def _slot_xpos(self, device: torch.device) -> XPos | None:
        """The XPos of every slot's position (quantized caches with xPos only), built once."""
        if self._xpos_args is not None and self._xpos is None:
            self._xpos = anchored_xpos(self.start, self.max_len, *self._xpos_args, dtype=self.dtype, device=device)
        return self._xpos

    def _window(self, layer, k, v, start, end, keys, vals):
        """Keep the last `window` positions exact: write them to the ring, then overlay them."""
        w = self.window
        for src, ring in ((k, self.kw), (v, self.vw)):
            keep = src[:, :, -w:]  # the newest positions of this write
            pos = torch.arange(end - keep.shape[2], end, device=src.device) % w
            ring[layer, :, :, pos] = keep.to(ring.dtype)
        recent = torch.arange(max(0, end - w), end, device=k.device)
        keys, vals = keys.clone(), vals.clone()
        keys[:, :, recent] = self.kw[layer, :, :, recent % w].to(keys.dtype)
        vals[:, :, recent] = self.vw[layer, :, :, recent % w].to(vals.dtype)
        return keys, vals

    def write_at(
        self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, 1, D) at the device position `pos` (1,); return the WHOLE buffers (B, H_kv, T, D).

        Static shapes and no host sync (the position stays on the device), so a CUDA graph can capture it;
        the caller masks the positions past `pos`. Full-precision caches only.
        """
        if self.bits is not None:
            raise ConfigError(f"cache: a static decode step needs a full-precision cache, not quant='{self.quant}'")
        keys, vals = self.k[layer], self.v[layer]  # (B, H_kv, T, D) views of the buffers
        keys.index_copy_(2, pos, k.to(keys.dtype))
        vals.index_copy_(2, pos, v.to(vals.dtype))
        return keys, vals

    def shift_state(self, layer: int, site: str) -> torch.Tensor | None:
        return self._shift.get((layer, site))

    def set_shift_state(self, layer: int, site: str, state: torch.Tensor) -> None:
        """Store (B, s, dim) rows. After the first store the buffer is written in place, never replaced,
        so a captured decode graph keeps reading and writing the same memory."""
        buf = self._shift.get((layer, site))
        if buf is not None and buf.shape == state.shape and buf.dtype == state.dtype:
            buf.copy_(state)
        else:
            self._shift[(layer, site)] = state.clone(memory_format=torch.contiguous_format)

    def shift_buffer(self, layer: int, site: str, like: torch.Tensor) -> torch.Tensor:
        """The shift-state buffer of a site, allocated as zeros shaped and typed like `like` if none yet
        (zeros are what the shift reads before any position)."""
        buf = self._shift.get((layer, site))
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._shift[(layer, site)] = torch.zeros_like(like, memory_format=torch.contiguous_format)
        return buf

    @property
    def position(self) -> int:
        """The position the next token takes: start + length."""
        return self.start + self.length

    def advance(self, n: int) -> None:
        self.length += n

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on: the next update writes there. Key norms stored for the kept
        positions stay valid. Token-shift state holds only the rows before the last position written, so a
        caller that rewinds must restore it (set_shift_state) from where it kept it."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cache.rewind: length must be in [0, {self.length}], got {length}")
        if self.window:
            raise ConfigError("cache.rewind: a cache with a full-precision window cannot rewind; use window=0")
        self.length = length
        self._normed = min(self._normed, length)

    def reset(self) -> None:
        """Empty the cache. Shift-state buffers are zeroed in place (a captured decode graph holds them)."""
        self.length = self._normed = 0
        for buf in self._shift.values():
            buf.zero_()
