"""perplexity: perplexity, bits per byte and word perplexity on a data source, with or without a
(quantized) KV cache (run code: scenarios/perplexity.py; the windows, with a picture: data/windows.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from andromeda.data.loaders import check_data_files, validate_data_spec
from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import TOKENS_MAX, Batch, Float, Heads, Int, NonEmpty, Tokens, show

CacheMode = Literal["off", "full", "int8", "int4"]
WordCount = Literal["whitespace", "lm-eval"]  # data/text.py WORD_COUNTS
MaxTokens = Int(1, 2**40)
NBoot = Int(1, 100_000)
CI = Float(0.0, 1.0, lo_open=True, hi_open=True)


def _seq_len(v: Any) -> Any:
    if v == "model" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= TOKENS_MAX):
        return v
    raise ValueError(f"must be an integer from 1 to {TOKENS_MAX:_} or 'model' (the model's context length), "
                     f"got {show(v)}")


SeqLen = Annotated[int | Literal["model"], BeforeValidator(_seq_len)]


def check_strides(seq_lens: list[int | str], strides: list[int | None], *, swept: bool = True) -> None:
    """Every (seq_len, stride) pair of the sweep runs: a stride is at most every window's seq_len (a seq_len
    of "model" is checked when the model is known)."""
    known = [n for n in seq_lens if isinstance(n, int)]
    if not known:
        return
    shortest = min(known)
    for i, s in enumerate(strides):
        if s is not None and s > shortest:
            where = f"stride[{i}]" if swept else "stride"
            raise ValueError(f"{where}: {s} is more than seq_len ({shortest}), the tokens each window feeds: "
                             f"use a stride from 1 to {shortest}, or null for non-overlapping windows")


@register_config
class PerplexityConfig(ScenarioConfig):
    SWEEP = ("seq_len", "stride", "cache")
    scenario: Literal["perplexity"] = Field("perplexity", description="Perplexity, bits per byte and word "
                                            "perplexity of the model on a data source.")
    data: str = Field("synthetic:markov", description=(
        "The data source: synthetic:markov, npy:<file>, bin:<file>, text:<file or dir>, text:python-docs "
        "(built in), datasets:<path>; see docs/quality.md."))
    split: Literal["all", "train", "val"] = Field("all", description=(
        "Which documents to score: all, or the train / val split (the last val_fraction of the documents)."))
    seq_len: NonEmpty(SeqLen) = Field([256], description=(
        "Tokens fed to the model per window (its context); each window scores up to seq_len tokens. "
        "'model' is the model's context length (max_seq_len): with stride null, lm-eval's rolling windows."))
    stride: NonEmpty(Tokens | None) = Field([None], description=(
        "null: non-overlapping windows (every token scored once, lm-eval's loglikelihood_rolling); s: sliding "
        "windows whose end moves s tokens at a time (1 <= s <= seq_len), each target keeping at least "
        "seq_len - s + 1 tokens of context."))
    cache: NonEmpty(CacheMode) = Field(["off"], description=(
        "off: one forward pass per window; full / int8 / int4: the window fed through a fresh KV cache, "
        "teacher-forced, and its logits compared with the forward pass's."))
    batch: Batch = Field(8, description="Windows per forward pass.")
    max_tokens: MaxTokens | None = Field(None, description=(
        "Tokens scored at most; null (the default) scores every token of every document. When it stops the "
        "evaluation early the record says how many documents and tokens were scored and warns."))
    words: WordCount = Field("whitespace", description=(
        "How word_ppl counts words: whitespace (len(text.split())) or lm-eval (len(re.split(r'\\s+', text)), "
        "which also counts an empty word at leading or trailing whitespace)."))
    add_bos: bool = Field(True, description=(
        "Text sources: start each document with BOS (EOS where the tokenizer has no BOS), so that every token "
        "of the text is scored, as lm-eval does."))
    group_size: Heads = Field(64, description="int8/int4 caches: features per quantization scale "
                              "(capped at dim_head).")
    cache_window: Int(0, TOKENS_MAX) = Field(0, description="int8/int4 caches: newest positions also kept exact.")
    decode_chunk: Tokens = Field(1, description="Tokens per cached forward call (1 = token by token, as in "
                                 "decoding).")
    ci: CI = Field(0.95, description="Confidence level of the bootstrap intervals.")
    n_boot: NBoot = Field(2000, description="Bootstrap resamples.")
    ci_unit: Literal["auto", "document", "window"] = Field("auto", description=(
        "What the bootstrap resamples: documents, windows, or auto (documents, windows when there is one)."))

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


__all__ = ["PerplexityConfig", "CacheMode", "WordCount", "SeqLen", "MaxTokens", "check_strides"]
