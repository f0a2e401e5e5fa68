"""data_parallel: DDP / FSDP2 training steps across processes, weak and strong scaling (run code:
scenarios/data_parallel.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from andromeda.bench.fields import Batch, Int, NonEmpty, NonNegFloat, PosFloat, Steps, Tokens2, Warmup
from andromeda.bench.scenarios.config import Ranks, ScenarioConfig, register_config


@register_config
class DataParallelConfig(ScenarioConfig):
    SWEEP = ("strategy", "scaling", "ranks")
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["data_parallel"] = "data_parallel"
    strategy: NonEmpty(Literal["ddp", "fsdp"]) = ["ddp"]
    scaling: NonEmpty(Literal["weak", "strong"]) = ["weak"]
    ranks: Ranks = ["all"]  # processes per case; "all" = the launcher's nproc x nodes
    batch: Batch = 8  # sequences per rank (weak) or in total (strong)
    seq_len: Tokens2 = 128  # a training sequence: at least one token of context and one target
    warmup: Warmup = 2  # untimed steps
    steps: Steps = 10  # timed steps
    lr: PosFloat = 1e-4
    grad_clip: PosFloat | None = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast dtype of forward and loss
    activation_checkpointing: bool = False
    profile_steps: Int(0, 1_000) = 2  # steps under torch.profiler for the communication share; 0 = none
    straggler_threshold: NonNegFloat = 0.1  # 0.1 = a rank 10% slower than the others


__all__ = ["DataParallelConfig"]
