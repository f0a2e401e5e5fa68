"""Pre-training: the loop (AdamW fused or 8-bit, fp32 / autocast / bf16 with float32 master weights, clipping,
warm-up + cosine, accumulation, regional compile, fused chunked LM head + loss, full or selective activation
checkpointing, health metrics and spike detection, validation, exact resume) and its checkpoint files."""

from andromeda.train.config import TrainConfig
from andromeda.train.fused_ce import fused_lm_loss, linear_cross_entropy
from andromeda.train.health import SpikeDetector
from andromeda.train.loop import (
    STATE_FILE,
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
    "enable_activation_checkpointing", "save_state", "load_state", "STATE_FILE", "linear_cross_entropy",
    "fused_lm_loss", "SpikeDetector",
]
