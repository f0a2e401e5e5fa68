"""generation: prefill and decode with and without a KV cache (run code: scenarios/generation.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from andromeda.bench.fields import TOKENS_MAX, Batch, Heads, Int, NonEmpty, Runs, Tokens
from andromeda.bench.scenarios.config import CacheKind, ScenarioConfig, register_config


@register_config
class GenerationConfig(ScenarioConfig):
    SWEEP = ("prompt_len", "gen_len", "batch", "use_cache", "cache", "cuda_graph", "decode_kernels")
    scenario: Literal["generation"] = "generation"
    prompt_len: NonEmpty(Tokens) = [32]
    gen_len: NonEmpty(Tokens) = [32]
    batch: NonEmpty(Batch) = [1]
    use_cache: NonEmpty(bool) = [True]
    runs: Runs = 3  # whole generations measured (each gives gen_len - 1 step samples)
    cache: NonEmpty(CacheKind) = ["full"]  # KV cache: model dtype, int8 or int4
    cache_group_size: Heads = 64  # int8/int4: features per scale
    cache_window: Int(0, TOKENS_MAX) = 0  # int8/int4: recent positions kept in full precision
    # Andromeda decode steps as one replayed CUDA graph (captured before the prefill, untimed); CUDA, full cache
    cuda_graph: NonEmpty(bool) = [False]
    # the graphed step's kernels (cuda_graph only): torch ops, our fused Triton kernels, or triton where it can run
    decode_kernels: NonEmpty(Literal["auto", "torch", "triton"]) = ["auto"]

    @model_validator(mode="after")
    def _check(self) -> GenerationConfig:
        if max(self.prompt_len) + max(self.gen_len) > TOKENS_MAX:
            raise ValueError(f"prompt_len + gen_len: at most {TOKENS_MAX} tokens in all, "
                             f"got {max(self.prompt_len)} + {max(self.gen_len)}")
        return self


__all__ = ["GenerationConfig"]
