"""memory: peak memory of inference and training steps, and of a filled KV cache (run code:
scenarios/memory.py)."""

from __future__ import annotations

from typing import Literal

from andromeda.bench.fields import TOKENS_MAX, Batch, Heads, Int, NonEmpty, Tokens
from andromeda.bench.scenarios.config import CacheKind, ScenarioConfig, register_config

Mode = Literal["inference", "train"]


@register_config
class MemoryConfig(ScenarioConfig):
    SWEEP = ("mode", "batch", "seq_len", "cache")
    scenario: Literal["memory"] = "memory"
    mode: NonEmpty(Mode) = ["inference"]
    batch: NonEmpty(Batch) = [1]
    seq_len: NonEmpty(Tokens) = [128, 256]
    kv_cache: bool = True  # also measure a filled KV cache (inference mode)
    cache: NonEmpty(CacheKind) = ["full"]  # that cache: model dtype, int8 or int4
    cache_group_size: Heads = 64  # int8/int4: features per scale
    cache_window: Int(0, TOKENS_MAX) = 0  # int8/int4: recent positions kept in full precision


__all__ = ["MemoryConfig", "Mode"]
