"""TrainConfig: every setting of a training run (optimization, precision, the speed options, health metrics),
validated at construction with the field's name, the allowed values and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from andromeda.errors import ConfigError

# fp32: float32 weights and compute. bf16 (also spelled bf16-autocast) / fp16: float32 weights, forward and loss
# under autocast (fp16 adds a GradScaler). bf16-master: bfloat16 weights and compute, float32 master weights in
# the optimizer (train/precision.py).
Precision = Literal["fp32", "bf16", "bf16-autocast", "fp16", "bf16-master"]
PRECISIONS = ("fp32", "bf16", "bf16-autocast", "fp16", "bf16-master")
Optimizer = Literal["adamw", "adamw8bit"]
Compile = Literal["none", "blocks"]
Checkpointing = Literal["none", "full", "selective"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 400
    batch: int = 16  # sequences per micro-batch
    seq_len: int = 128
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 40  # linear warm-up from lr / warmup_steps
    weight_decay: float = 0.1  # on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping (the norm is still logged)
    optimizer: Optimizer = "adamw"
    fused_adamw: bool = False  # torch's fused AdamW kernel on CUDA (foreach elsewhere); adamw only
    precision: Precision = "fp32"  # see PRECISIONS above; "bf16-autocast" is stored as "bf16"
    # speed: regional torch.compile of each block; the LM head and loss fused and chunked (train/fused_ce.py);
    # activation checkpointing of each block: full (recompute the block) or selective (save matmul outputs,
    # recompute the rest; train/regional.py). activation_checkpointing: true is checkpointing: full.
    compile: Compile = "none"
    fused_ce: bool = False
    checkpointing: Checkpointing = "none"
    activation_checkpointing: bool = False
    # health: the global and per-layer gradient norms every step (from the clipping's own norms), each block's
    # output mean/std/max-abs every health_every steps (0 = off: no per-layer norms, no activation statistics),
    # and a spike detector: loss or gradient norm above spike_sigma standard deviations of the previous
    # spike_window steps (train/health.py)
    health_every: int = 10
    spike_window: int = 50
    spike_sigma: float = 6.0
    log_every: int = 10
    eval_every: int = 100  # 0 = only after the last step
    checkpoint_every: int = 0  # 0 = only after the last step
    checkpoint_dir: str | None = None  # None = no checkpoints
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq_len", "grad_accum", "log_every", "spike_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay", "health_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"training.lr: must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"training.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"training.grad_clip: must be > 0 or null, got {self.grad_clip}")
        if not self.spike_sigma > 0:
            raise ConfigError(f"training.spike_sigma: must be > 0, got {self.spike_sigma}")
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("optimizer", self.optimizer, ("adamw", "adamw8bit"))
        _one_of("compile", self.compile, ("none", "blocks"))
        _one_of("checkpointing", self.checkpointing, ("none", "full", "selective"))
        for name in ("fused_adamw", "fused_ce", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"training.{name}: must be true or false, got {getattr(self, name)!r}")
        if self.fused_adamw and self.optimizer != "adamw":
            raise ConfigError(f"training.fused_adamw: is torch's AdamW kernel; optimizer is {self.optimizer!r}. "
                              "Set optimizer: adamw or fused_adamw: false")
        if self.activation_checkpointing and self.checkpointing == "selective":
            raise ConfigError("training.activation_checkpointing: true means checkpointing: full, but checkpointing "
                              "is 'selective'; give one of the two")
        if self.precision == "bf16-autocast":  # one spelling stored, so checkpoints compare equal
            object.__setattr__(self, "precision", "bf16")
        if self.activation_checkpointing:
            object.__setattr__(self, "checkpointing", "full")
        elif self.checkpointing == "full":
            object.__setattr__(self, "activation_checkpointing", True)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.grad_accum * self.seq_len

    @property
    def autocast_dtype(self) -> str | None:
        """'bf16' or 'fp16' where forward and loss run under autocast, else None."""
        return self.precision if self.precision in ("bf16", "fp16") else None


def _one_of(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"training.{name}: one of {', '.join(allowed)}; got {value!r}")


__all__ = ["TrainConfig", "Precision", "PRECISIONS", "Optimizer", "Compile", "Checkpointing"]
