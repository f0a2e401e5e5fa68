"""training: pre-training steps with loss, validation perplexity, tokens/s, MFU and the training step's speed
options (bf16 weights with float32 masters, fused AdamW, regional compile, fused LM head + loss, full or selective
activation checkpointing) and health metrics (run code: scenarios/training.py; the step: train/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

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
    precision: Literal["fp32", "bf16", "fp16", "bf16-master"] = Field("fp32", description=(
        "fp32: float32 weights and math. bf16 / fp16: float32 weights, forward and loss under autocast (fp16 with "
        "a GradScaler). bf16-master: bfloat16 weights and math, float32 master weights in the optimizer (the "
        "model is given back in its own dtype after the case)."))
    fused_adamw: bool = Field(False, description=(
        "torch's fused AdamW kernel (CUDA; the foreach implementation elsewhere); optimizer adamw only."))
    compile: Literal["none", "blocks"] = Field("none", description=(
        "blocks: torch.compile each transformer block (one graph per block shape, shared by every layer) and the "
        "fused loss's chunks; none: eager."))
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field("inductor", description=(
        "torch.compile backend of compile: blocks: inductor (generated kernels: the fast one), aot_eager (forward "
        "and backward graphs traced and partitioned, run with eager kernels: checks the compiled path without code "
        "generation), eager (traced only)."))
    fused_ce: bool = Field(False, description=(
        "The LM head and cross-entropy fused and chunked: the float32 logits of the whole batch are never "
        "materialized (same loss as the unfused step)."))
    checkpointing: Literal["none", "full", "selective"] = Field("none", description=(
        "Activation checkpointing of each block: full (its forward runs again in backward), selective (matmul and "
        "attention outputs kept, the rest recomputed); HFU counts what is recomputed."))
    activation_checkpointing: bool = Field(False, description=(
        "true = checkpointing: full (the older spelling)."))
    health_every: Int(0, 10_000_000) = Field(10, description=(
        "Steps between health readings: per-layer gradient norms and each block's output mean / std / max |x| "
        "(0 = off: the global gradient norm only, no spike detection)."))
    spike_window: Steps = Field(50, description=(
        "Steps the spike detector looks back over (loss and gradient norm; health_every > 0)."))
    spike_sigma: PosFloat = Field(6.0, description=(
        "A loss or gradient norm rising more than this many standard deviations of the window's step-to-step "
        "changes is a spike; the record names the layer whose gradient moved most."))
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

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.fused_adamw and self.optimizer != "adamw":
            raise ValueError(f"fused_adamw: is torch's AdamW kernel, but optimizer is {self.optimizer}; set "
                             "optimizer: adamw or fused_adamw: false")
        if self.activation_checkpointing and self.checkpointing == "selective":
            raise ValueError("checkpointing: is selective, but activation_checkpointing: true means full; give "
                             "one of the two")
        if self.compile == "none" and self.compile_backend != "inductor":
            raise ValueError(f"compile_backend: {self.compile_backend} has no effect with compile: none; set "
                             "compile: blocks or remove compile_backend")
        return self

    def check_resources(self) -> None:
        check_data_files(self.data)
        if self.checkpoint_dir is not None and Path(self.checkpoint_dir).exists() \
                and not Path(self.checkpoint_dir).is_dir():
            raise ValueError(f"checkpoint_dir: '{self.checkpoint_dir}' is a file; checkpoints go into a directory")


__all__ = ["TrainingConfig"]
