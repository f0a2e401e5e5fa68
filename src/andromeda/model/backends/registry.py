"""The attention-backend registry: what a backend is (AttentionSpec, Backend), @register, and the choice of
one (select, preference). The backends import this module; the package imports both (no import cycle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from andromeda.errors import UnsupportedError


@dataclass(frozen=True)
class AttentionSpec:
    """What a backend needs to know to say whether it can run an attention call."""

    heads: int
    kv_heads: int
    dim_head: int
    causal: bool = True
    alibi: bool = False
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_model(cls, cfg, dtype: torch.dtype = torch.float32) -> AttentionSpec:
        return cls(
            heads=cfg.heads,
            kv_heads=cfg.n_kv_heads,
            dim_head=cfg.dim_head,
            causal=cfg.causal,
            alibi=cfg.n_alibi_heads > 0,
            dtype=dtype,
        )


class Backend(Protocol):
    name: str

    def supports(self, spec: AttentionSpec, device: torch.device) -> str | None: ...

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        scale: float,
        alibi_slopes: torch.Tensor | None,
    ) -> torch.Tensor: ...


_REGISTRY: dict[str, type] = {}
_INSTANCES: dict[str, Backend] = {}


def register(name: str):
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Backend:
    if name not in _REGISTRY:
        raise UnsupportedError(f"attention backend '{name}' is unknown; available: {', '.join(_REGISTRY)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


def preference(spec: AttentionSpec, device: torch.device) -> list[str]:
    """Backends in the order `auto` tries them, fastest first, for this device and spec.

    On CUDA, SDPA's fused kernels take no ALiBi slopes (a float mask is O(N^2) and disables
    them), so with ALiBi FlexAttention's fused score_mod goes first. On CPU, FlexAttention runs
    unfused, so SDPA goes first.
    """
    if device.type == "cuda":
        order = ["triton", "flex", "sdpa"] if spec.alibi else ["triton", "sdpa", "flex"]
    else:
        order = ["sdpa", "flex"]
    return [n for n in order if n in _REGISTRY] + ["eager"]


def select(spec: AttentionSpec, device: torch.device, requested: str = "auto") -> Backend:
    """The named backend if it supports the spec (else a clear error), or the fastest that does."""
    if requested != "auto":
        backend = get(requested)
        reason = backend.supports(spec, device)
        if reason is not None:
            raise UnsupportedError(f"model.attn_backend: '{requested}' cannot run this config: {reason}")
        return backend
    for name in preference(spec, device):
        if get(name).supports(spec, device) is None:
            return get(name)
    raise UnsupportedError("no attention backend supports this config")  # eager supports all


def reasons(spec: AttentionSpec, device: torch.device) -> dict[str, str | None]:
    """name -> None (supported) or the reason it is not, for every registered backend."""
    return {n: get(n).supports(spec, device) for n in _REGISTRY}
