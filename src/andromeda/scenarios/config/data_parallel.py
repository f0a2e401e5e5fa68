"""data_parallel: DDP / FSDP2 training steps across processes, weak and strong scaling (run code:
scenarios/data_parallel.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from andromeda.scenarios.config import Ranks, ScenarioConfig, register_config
from andromeda.schema.fields import Batch, Int, NonEmpty, NonNegFloat, PosFloat, Steps, Tokens2, Warmup


@register_config
class DataParallelConfig(ScenarioConfig):
    SWEEP = ("strategy", "scaling", "ranks")
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["data_parallel"] = Field("data_parallel", description=(
        "The scenario: data_parallel (training tokens/s with DDP or FSDP2 across processes)."))
    strategy: NonEmpty(Literal["ddp", "fsdp"]) = Field(["ddp"], description=(
        "Data-parallel strategies (swept): ddp, fsdp (FSDP2, fully_shard)."))
    scaling: NonEmpty(Literal["weak", "strong"]) = Field(["weak"], description=(
        "weak: batch per rank; strong: batch in total, split over the ranks (swept)."))
    ranks: Ranks = Field(["all"], description=(
        "Processes per case (swept), or all (the launcher's nproc x nodes); points past the GPUs present "
        "are skipped."))
    batch: Batch = Field(8, description="Sequences per rank (weak scaling) or in total (strong scaling).")
    seq_len: Tokens2 = Field(128, description=(
        "Tokens per training sequence (at least 2: one of context, one target)."))
    warmup: Warmup = Field(2, description="Untimed training steps.")
    steps: Steps = Field(10, description="Timed training steps.")
    lr: PosFloat = Field(1e-4, description="AdamW learning rate.")
    grad_clip: PosFloat | None = Field(1.0, description="Max global gradient norm; null = no clipping.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "Autocast dtype of forward and loss: fp32 or bf16."))
    activation_checkpointing: bool = Field(False, description=(
        "Recompute each block's activations in backward (less memory, more compute)."))
    profile_steps: Int(0, 1_000) = Field(2, description=(
        "Steps run under torch.profiler to measure the communication share of a step; 0 = none."))
    straggler_threshold: NonNegFloat = Field(0.1, description=(
        "A rank whose median step time is this fraction above the others' median is a straggler (0.1 = "
        "10%)."))


__all__ = ["DataParallelConfig"]
