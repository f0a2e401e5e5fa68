"""perplexity: perplexity, bits per byte and word perplexity on a data source, with or without a
(quantized) KV cache (run code: scenarios/perplexity.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from andromeda.bench.fields import TOKENS_MAX, Batch, Float, Heads, Int, NonEmpty, Tokens, Tokens2
from andromeda.bench.scenarios.config import ScenarioConfig, register_config
from andromeda.data.loaders import check_data_files, validate_data_spec

CacheMode = Literal["off", "full", "int8", "int4"]
MaxTokens = Int(1, 2**40)
NBoot = Int(1, 100_000)
CI = Float(0.0, 1.0, lo_open=True, hi_open=True)


def check_strides(seq_lens: list[int], strides: list[int | None], *, swept: bool = True) -> None:
    """Every (seq_len, stride) pair of the sweep runs: each stride must be below every window."""
    shortest = min(seq_lens)
    for i, s in enumerate(strides):
        if s is not None and s >= shortest:
            where = f"stride[{i}]" if swept else "stride"
            raise ValueError(f"{where}: {s} must be below seq_len ({shortest}), so that every window keeps context: "
                             f"between 1 and {shortest - 1}, or null for non-overlapping windows")


@register_config
class PerplexityConfig(ScenarioConfig):
    SWEEP = ("seq_len", "stride", "cache")
    scenario: Literal["perplexity"] = "perplexity"
    data: str = "synthetic:markov"  # a data source (data/loaders.py), e.g. npy:val.npy, text:wiki.txt
    split: Literal["all", "train", "val"] = "all"
    seq_len: NonEmpty(Tokens2) = [256]  # window length (tokens): at least one of context and one scored
    stride: NonEmpty(Tokens | None) = [None]  # null: non-overlapping windows
    cache: NonEmpty(CacheMode) = ["off"]
    batch: Batch = 8  # windows per forward pass
    max_tokens: MaxTokens | None = 32768  # tokens scored at most (null: all)
    add_bos: bool = True  # text: start each document with BOS so that every text token is scored
    group_size: Heads = 64  # int8/int4 caches: features per quantization scale (capped at dim_head)
    cache_window: Int(0, TOKENS_MAX) = 0  # int8/int4 caches: newest positions also kept exact
    decode_chunk: Tokens = 1  # tokens per cached forward call (1 = token by token, as in decoding)
    ci: CI = 0.95
    n_boot: NBoot = 2000
    ci_unit: Literal["auto", "document", "window"] = "auto"

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        validate_data_spec(v)
        return v

    @model_validator(mode="after")
    def _windows(self) -> PerplexityConfig:
        check_strides(self.seq_len, self.stride)
        return self

    def check_resources(self) -> None:
        check_data_files(self.data)


__all__ = ["PerplexityConfig", "CacheMode", "check_strides"]
