"""training: pre-training steps with loss, validation perplexity, tokens/s and MFU (run code:
scenarios/training.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from andromeda.bench.fields import (
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
from andromeda.bench.scenarios.config import ScenarioConfig, register_config
from andromeda.data.loaders import check_data_files, validate_data_spec

Beta = Float(0.0, 1.0, hi_open=True)


@register_config
class TrainingConfig(ScenarioConfig):
    SWEEP = ("lr",)
    scenario: Literal["training"] = "training"
    data: str = "synthetic:markov"  # a data source (data/loaders.py)
    steps: Steps = 400
    batch: Batch = 16
    seq_len: Tokens2 = 128  # a training sequence: at least one token of context and one target
    grad_accum: Int(1, 65_536) = 1
    lr: NonEmpty(PosFloat) = [3e-3]
    min_lr_ratio: Fraction = 0.1
    warmup_steps: StepsOr0 = 40
    weight_decay: NonNegFloat = 0.1
    beta1: Beta = 0.9
    beta2: Beta = 0.95
    eps: PosFloat = 1e-8
    grad_clip: PosFloat | None = 1.0
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: bool = False
    log_every: Steps = 10
    eval_every: StepsOr0 = 100  # 0 = validate after the last step only
    eval_seq_len: Tokens2 | None = None  # validation window (default: seq_len)
    eval_max_tokens: Int(1, 2**40) | None = 16384  # validation tokens scored each time
    checkpoint_every: StepsOr0 = 0  # 0 = only at the end
    checkpoint_dir: str | None = None  # null = no checkpoints (andromeda train sets <out>/checkpoints)

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
