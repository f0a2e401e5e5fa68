"""Attention backends: one file per kernel, one registry.

Contract: a backend is a class registered with @register("name") that has
  supports(spec, device) -> str | None     None = yes, else the reason it cannot
  __call__(q, k, v, *, causal, scale, alibi_slopes) -> out   (and norms=, where score_norms is set)
with q (B, H, Nq, D), k and v (B, H_kv, Nk, D), Nq <= Nk (queries are the last Nq positions,
so a causal mask is aligned bottom-right), alibi_slopes (H,) float32 with zeros on heads
without ALiBi, or None. `eager` is the reference; every backend has a parity test against it.

Kernel tuning (settings.py): the Triton kernels' settings as frozen dataclasses, TritonTuning (this package's
flash attention) and DecodeTuning (the fused decode step), read with tuning(TritonTuning), set with
set_tuning(...) or for a block with `with tuned(...)`, recorded with tuning_record().
"""

from __future__ import annotations

# Registration happens on import; the reference first.
from andromeda.model.backends import eager, flex, sdpa, triton_flash  # noqa: E402,F401
from andromeda.model.backends.registry import (
    AttentionSpec,
    Backend,
    get,
    names,
    preference,
    reasons,
    register,
    select,
)
from andromeda.model.backends.settings import DecodeTuning, TritonTuning, set_tuning, tuned, tuning, tuning_record

__all__ = ["AttentionSpec", "Backend", "register", "names", "get", "select", "preference", "reasons",
           "TritonTuning", "DecodeTuning", "tuning", "set_tuning", "tuned", "tuning_record"]
