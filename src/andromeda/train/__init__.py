"""Pre-training: the loop (AdamW / 8-bit AdamW, autocast, clipping, warm-up + cosine, accumulation,
activation checkpointing, validation, exact resume) and its checkpoint files."""

from andromeda.train.loop import (
    STATE_FILE,
    TrainConfig,
    Trainer,
    TrainResult,
    WarmupCosine,
    adamw8bit_unavailable,
    enable_activation_checkpointing,
    make_optimizer,
)
from andromeda.train.state import load_state, save_state

__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "WarmupCosine", "make_optimizer", "adamw8bit_unavailable",
    "enable_activation_checkpointing", "save_state", "load_state", "STATE_FILE",
]
