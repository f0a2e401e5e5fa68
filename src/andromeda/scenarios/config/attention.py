"""attention: attention implementations and sparsity patterns on one (B, H, N, D) problem (run code:
scenarios/attention.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from andromeda.scenarios.config import DType, ScenarioConfig, register_config
from andromeda.schema.fields import STRICT, TOKENS_MAX, Batch, Heads, Int, NonEmpty, Tokens

# scenarios/attention/impls.IMPLS and sparsity.PATTERNS (those modules import torch; a test keeps them equal)
IMPLS = ("eager", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flex", "triton", "flash_attn",
         "xformers")
PATTERNS = ("dense", "sliding_window", "bigbird", "dilated", "block_sparse")
Impl = Literal[IMPLS]  # type: ignore[valid-type]
PatternName = Literal[PATTERNS]  # type: ignore[valid-type]
Pass = Literal["forward", "fwd_bwd"]
LAYOUT_MAX = 1024  # block_sparse layout: at most this many rows and columns


@register_config
class AttentionConfig(ScenarioConfig):
    model_config = ConfigDict(**STRICT, populate_by_name=True)
    SWEEP = ("dtype", "causal", "pattern", "seq_len", "pass_", "impl")  # impls of one shape run back to back
    scenario: Literal["attention"] = Field("attention", description=(
        "The scenario: attention (attention kernels alone: speed, memory, accuracy against a float64 "
        "reference)."))
    impl: NonEmpty(Impl) = Field(["eager", "sdpa_math", "flex"], description=(
        "Attention implementations to measure (swept): eager, sdpa_math, sdpa_flash, sdpa_efficient, "
        "sdpa_cudnn, flex, triton, flash_attn, xformers."))
    pattern: NonEmpty(PatternName) = Field(["dense"], description=(
        "Attention patterns (swept): dense, sliding_window, dilated, bigbird, block_sparse."))
    seq_len: NonEmpty(Tokens) = Field([256], description="Sequence lengths N (swept), in tokens.")
    batch: Batch = Field(1, description="Sequences per call.")
    heads: Heads = Field(4, description="Query heads H.")
    kv_heads: Heads = Field(4, description="Key/value heads: = heads is MHA, a divisor of heads GQA, 1 MQA.")
    head_dim: Heads = Field(32, description="Features per head D.")
    dtype: NonEmpty(DType) = Field(["float32"], description="Input dtypes (swept): float32, bfloat16, float16.")
    causal: NonEmpty(bool) = Field([True], description="Causal masking (swept): [true], [false] or both.")
    alibi: bool = Field(False, description=(
        "Add ALiBi slopes on every head (kernels that cannot take them are skipped)."))
    pass_: NonEmpty(Pass) = Field(description=(
        "What is timed (swept): forward or fwd_bwd (forward + backward)."), default=["forward"], alias="pass")
    window: Tokens = Field(256, description=(
        "sliding_window / dilated: keys per side; bigbird: the local band (window // block_size blocks)."))
    dilation: Tokens = Field(2, description="dilated: keep every dilation-th key within the window.")
    global_tokens: Int(0, TOKENS_MAX) = Field(0, description=(
        "bigbird: tokens every query attends to and that attend to everything."))
    random_blocks: Int(0, 65_536) = Field(0, description="bigbird: random key blocks per query block.")
    block_size: Int(1, 65_536) = Field(128, description=(
        "FlexAttention's block size; bigbird's block; the unit of block-sparsity figures."))
    layout: NonEmpty(NonEmpty(Literal[0, 1], LAYOUT_MAX), LAYOUT_MAX) | None = Field(None, description=(
        "block_sparse: an L x L matrix of 0/1 blocks, stretched over N x N."))
    dense_mask_max_len: Tokens = Field(4096, description=(
        "eager and SDPA take a sparse pattern or ALiBi as a dense mask up to this N; longer points are "
        "skipped for them."))
    ref_rows: Tokens = Field(256, description=(
        "The float64 reference is computed on at most this many query rows (all when N is smaller)."))
    profile_kernels: bool = Field(True, description=(
        "CUDA: record the kernel names torch.profiler sees for each implementation."))

    @model_validator(mode="after")
    def _check(self) -> AttentionConfig:
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if "block_sparse" in self.pattern and not self.layout:
            raise ValueError("layout: pattern block_sparse needs a layout (an L x L list of 0/1 rows)")
        if self.layout:
            size = len(self.layout)
            if any(len(row) != size for row in self.layout):
                raise ValueError(f"layout: must be square; got {size} rows of lengths {[len(r) for r in self.layout]}")
            # every query must see a key: a row needs a 1 at or before the diagonal (causal) or anywhere
            causal = True in self.causal
            for i, row in enumerate(self.layout):
                if not any(row[: i + 1] if causal else row):
                    hint = " (causal: it needs a 1 at or before the diagonal)" if causal else ""
                    raise ValueError(f"layout: row {i} leaves its queries no key to attend to{hint}")
        return self

    def points(self):
        return [{("pass" if k == "pass_" else k): v for k, v in p.items()} for p in super().points()]


__all__ = ["AttentionConfig", "IMPLS", "PATTERNS", "Impl", "PatternName", "Pass"]
