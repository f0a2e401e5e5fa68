"""memory: peak memory of inference and training steps, and of a filled KV cache (run code:
scenarios/memory.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from andromeda.scenarios.config import CacheKind, ScenarioConfig, register_config
from andromeda.schema.fields import TOKENS_MAX, Batch, Heads, Int, NonEmpty, Tokens

Mode = Literal["inference", "train"]


@register_config
class MemoryConfig(ScenarioConfig):
    SWEEP = ("mode", "batch", "seq_len", "cache")
    scenario: Literal["memory"] = Field("memory", description=(
        "The scenario: memory (peak memory of inference and training steps, and of a filled KV cache)."))
    mode: NonEmpty(Mode) = Field(["inference"], description=(
        "Steps measured (swept): inference or train (forward + backward)."))
    batch: NonEmpty(Batch) = Field([1], description="Sequences per batch (swept).")
    seq_len: NonEmpty(Tokens) = Field([128, 256], description="Tokens per sequence (swept).")
    kv_cache: bool = Field(True, description=(
        "Also measure a filled KV cache in inference mode (bytes per token, beside the formula)."))
    cache: NonEmpty(CacheKind) = Field(["full"], description=(
        "KV caches measured (swept): full (model dtype), int8, int4."))
    cache_group_size: Heads = Field(64, description="int8 / int4 caches: features per quantization scale.")
    cache_window: Int(0, TOKENS_MAX) = Field(0, description=(
        "int8 / int4 caches: recent positions kept in full precision."))


__all__ = ["MemoryConfig", "Mode"]
