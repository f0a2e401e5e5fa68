"""generation: prefill and decode with and without a KV cache (run code: scenarios/generation.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from andromeda.scenarios.config import CacheKind, ScenarioConfig, register_config
from andromeda.schema.fields import TOKENS_MAX, Batch, Heads, Int, NonEmpty, Runs, Tokens


@register_config
class GenerationConfig(ScenarioConfig):
    SWEEP = ("prompt_len", "gen_len", "batch", "use_cache", "cache", "cuda_graph", "decode_kernels")
    scenario: Literal["generation"] = Field("generation", description=(
        "Prefill, time to first token, time per output token and decode rates of greedy generation."))
    prompt_len: NonEmpty(Tokens) = Field([32], description="Prompt tokens (random ids), prefilled in one pass.")
    gen_len: NonEmpty(Tokens) = Field([32], description="Tokens generated after the prompt (greedy).")
    batch: NonEmpty(Batch) = Field([1], description="Sequences generated together.")
    use_cache: NonEmpty(bool) = Field([True], description=(
        "true: each step feeds the new token and reuses the KV cache; false: each step recomputes the "
        "whole prefix (what the cache saves)."))
    runs: Runs | None = Field(None, description=(
        "Whole generations measured. null: as latency is timed, per the manifest's timing section "
        "(at least min_runs, until the prefill and end-to-end medians are stable within target_rel_ci or "
        "budget_s is spent, at most max_runs); a number: exactly that many."))
    cache: NonEmpty(CacheKind) = Field(["full"], description="KV cache: the model's dtype, or int8 / int4 "
                                       "(Andromeda models).")
    cache_group_size: Heads = Field(64, description="int8/int4 caches: features per quantization scale.")
    cache_window: Int(0, TOKENS_MAX) = Field(0, description="int8/int4 caches: recent positions kept in full "
                                             "precision.")
    cuda_graph: NonEmpty(bool) = Field([False], description=(
        "Andromeda decode steps as one replayed CUDA graph (captured before the prefill, untimed); CUDA and a "
        "full-precision cache only."))
    decode_kernels: NonEmpty(Literal["auto", "torch", "triton"]) = Field(["auto"], description=(
        "The graphed step's kernels (cuda_graph only): torch ops, our fused Triton kernels, or triton where "
        "it can run (auto)."))

    @model_validator(mode="after")
    def _check(self) -> GenerationConfig:
        if max(self.prompt_len) + max(self.gen_len) > TOKENS_MAX:
            raise ValueError(f"prompt_len + gen_len: at most {TOKENS_MAX} tokens in all, "
                             f"got {max(self.prompt_len)} + {max(self.gen_len)}")
        return self


__all__ = ["GenerationConfig"]
