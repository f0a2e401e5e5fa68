"""training: pre-training steps with loss, validation perplexity, tokens/s and MFU (run code:
scenarios/training.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from andromeda.data.loaders import check_data_files, validate_data_spec
from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import (
    Batch,
    Float,
    Fraction,
    Int,
    NonEmpty,
    NonNegFloat,
    PosFloat,
    Steps,
    StepsOr0,
    Tokens2,
)

Beta = Float(0.0, 1.0, hi_open=True)


@register_config
class TrainingConfig(ScenarioConfig):
    SWEEP = ("lr",)
    scenario: Literal["training"] = Field("training", description=(
        "The scenario: training (a short pre-training run with its curves)."))
    data: str = Field("synthetic:markov", description=(
        "Data source: synthetic:markov[?...] (known entropy floor), text:<file>, npy:/bin: token files, "
        "... (docs/quality.md)."))
    steps: Steps = Field(400, description="Optimizer steps.")
    batch: Batch = Field(16, description="Sequences per micro-batch.")
    seq_len: Tokens2 = Field(128, description=(
        "Tokens per training sequence (at least 2: one of context, one target)."))
    grad_accum: Int(1, 65_536) = Field(1, description="Micro-batches per optimizer step.")
    lr: NonEmpty(PosFloat) = Field([3e-3], description="Peak learning rates (swept).")
    min_lr_ratio: Fraction = Field(0.1, description="The cosine schedule decays to lr x this at the last step.")
    warmup_steps: StepsOr0 = Field(40, description="Linear warm-up steps from lr / warmup_steps to lr.")
    weight_decay: NonNegFloat = Field(0.1, description="AdamW weight decay, on matrices and embeddings only.")
    beta1: Beta = Field(0.9, description="AdamW beta1.")
    beta2: Beta = Field(0.95, description="AdamW beta2.")
    eps: PosFloat = Field(1e-8, description="AdamW epsilon.")
    grad_clip: PosFloat | None = Field(1.0, description=(
        "Max global gradient norm; null = no clipping (the norm is still logged)."))
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description=(
        "adamw, or adamw8bit (bitsandbytes, CUDA only)."))
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description=(
        "Autocast dtype of forward and loss: fp32, bf16, or fp16 (with a GradScaler)."))
    activation_checkpointing: bool = Field(False, description=(
        "Recompute each block's activations in backward (less memory; HFU counts the recompute)."))
    log_every: Steps = Field(10, description="Steps per logged record (and per progress line of andromeda train).")
    eval_every: StepsOr0 = Field(100, description="Steps between validations; 0 = validate after the last step only.")
    eval_seq_len: Tokens2 | None = Field(None, description="Validation window in tokens; null = seq_len.")
    eval_max_tokens: Int(1, 2**40) | None = Field(16384, description=(
        "Validation tokens scored each time; null = the whole validation split."))
    checkpoint_every: StepsOr0 = Field(0, description="Steps between checkpoints; 0 = only at the end.")
    checkpoint_dir: str | None = Field(None, description=(
        "Where training state is saved to resume exactly; null = no checkpoints (andromeda train sets "
        "<out>/checkpoints)."))

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        validate_data_spec(v)
        return v

    def check_resources(self) -> None:
        check_data_files(self.data)
        if self.checkpoint_dir is not None and Path(self.checkpoint_dir).exists() \
                and not Path(self.checkpoint_dir).is_dir():
            raise ValueError(f"checkpoint_dir: '{self.checkpoint_dir}' is a file; checkpoints go into a directory")


__all__ = ["TrainingConfig"]
