"""attention: attention implementations and sparsity patterns on one (B, H, N, D) problem (run code:
scenarios/attention.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from andromeda.bench.fields import STRICT, TOKENS_MAX, Batch, Heads, Int, NonEmpty, Tokens
from andromeda.bench.scenarios.config import DType, ScenarioConfig, register_config

# bench/attention_impls.IMPLS and bench/sparsity.PATTERNS (those modules import torch; a test keeps them equal)
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
    scenario: Literal["attention"] = "attention"
    impl: NonEmpty(Impl) = ["eager", "sdpa_math", "flex"]
    pattern: NonEmpty(PatternName) = ["dense"]
    seq_len: NonEmpty(Tokens) = [256]
    batch: Batch = 1
    heads: Heads = 4
    kv_heads: Heads = 4  # = heads: MHA; a divisor: GQA; 1: MQA
    head_dim: Heads = 32
    dtype: NonEmpty(DType) = ["float32"]
    causal: NonEmpty(bool) = [True]
    alibi: bool = False  # ALiBi slopes on every head
    pass_: NonEmpty(Pass) = Field(default=["forward"], alias="pass")
    window: Tokens = 256  # sliding_window / dilated: keys per side; bigbird: local band (window // block_size blocks)
    dilation: Tokens = 2
    global_tokens: Int(0, TOKENS_MAX) = 0  # bigbird
    random_blocks: Int(0, 65_536) = 0  # bigbird: random key blocks per query block
    block_size: Int(1, 65_536) = 128  # FlexAttention block; bigbird's block; the unit of block_sparsity
    layout: NonEmpty(NonEmpty(Literal[0, 1], LAYOUT_MAX), LAYOUT_MAX) | None = None  # block_sparse: L x L
    dense_mask_max_len: Tokens = 4096  # eager/SDPA take a sparse pattern or ALiBi as a dense mask up to this N
    ref_rows: Tokens = 256  # float64 reference on at most this many query rows (all rows when N is smaller)
    profile_kernels: bool = True  # CUDA: record the kernel names torch.profiler sees

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
