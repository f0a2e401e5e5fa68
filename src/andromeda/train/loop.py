"""A small, exact pre-training loop: AdamW (or bitsandbytes 8-bit AdamW on CUDA), bf16/fp16
autocast (GradScaler for fp16), gradient clipping, warm-up + cosine schedule, gradient
accumulation, optional activation checkpointing, validation every N steps, resumable checkpoints.

Every step logs its loss, learning rate, gradient norm (before clipping), tokens/s, TFLOP/s and MFU
(model FLOPs, backward per the attention kernel: bench.flops; MFU when the device's peak is known), with
activation checkpointing also hardware_tflops and HFU (the recomputed block forward counted), the
step-time split (forward, backward, optimizer; each measured between device synchronizations) and
peak memory (CUDA allocator peak of the step; on other devices the process's peak RSS so far).

Resuming is exact: a checkpoint holds the model, optimizer, scheduler and GradScaler states,
the torch RNG states, the step, the data position (micro-batches consumed; batches are a pure
function of the position) and the history so far, saved with torch.save as tensors and plain
containers only, loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from andromeda.measure.flops import recomputed_forward_flops, train_step_flops
from andromeda.measure.timing import Stopwatch
from andromeda.errors import ConfigError, UnsupportedError
from andromeda.train.progress import progress_line
from andromeda.train.state import load_state, save_state

Precision = Literal["fp32", "bf16", "fp16"]
Optimizer = Literal["adamw", "adamw8bit"]
MiB = 2**20
STATE_FILE = "state.pt"
# fields that may differ between a checkpoint and the run resuming it (they do not change the math)
_RESUME_FREE = ("steps", "log_every", "eval_every", "checkpoint_every", "checkpoint_dir")


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
    precision: Precision = "fp32"  # autocast dtype for forward and loss; fp16 adds a GradScaler
    activation_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 100  # 0 = only after the last step
    checkpoint_every: int = 0  # 0 = only after the last step
    checkpoint_dir: str | None = None  # None = no checkpoints
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq_len", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"training.lr: must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"training.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"training.grad_clip: must be > 0 or null, got {self.grad_clip}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"training.precision: one of fp32, bf16, fp16; got {self.precision!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ConfigError(f"training.optimizer: one of adamw, adamw8bit; got {self.optimizer!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.grad_accum * self.seq_len


class WarmupCosine:
    """LR multiplier: linear warm-up to 1 over warmup_steps, then cosine to min_ratio at `steps`.

    A callable object (not a lambda) so that LambdaLR.state_dict() keeps its numbers.
    """

    def __init__(self, steps: int, warmup_steps: int, min_ratio: float):
        self.steps, self.warmup_steps, self.min_ratio = steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - 1 - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on >= 2-D parameters; `adamw8bit` is bitsandbytes' AdamW8bit (CUDA)."""
    params = [p for p in _unique_params(model) if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adamw8bit":
        reason = adamw8bit_unavailable(device)
        if reason:
            raise UnsupportedError(reason)
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def adamw8bit_unavailable(device: torch.device) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"optimizer adamw8bit: bitsandbytes 8-bit AdamW needs a CUDA device; this run is on {device.type}"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "optimizer adamw8bit: bitsandbytes is not installed; install it with: pip install bitsandbytes"
    return None


def _unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def enable_activation_checkpointing(model: nn.Module) -> Callable[[], None]:
    """Recompute each block's activations in backward (torch.utils.checkpoint, non-reentrant).

    Andromeda: every module of `model.blocks` gets a checkpointed forward (the state dict is
    unchanged). Hugging Face models: gradient_checkpointing_enable(). Returns a function that undoes it.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        for blk in blocks:
            inner = blk.forward

            def forward(*args, _inner=inner, **kwargs):
                cache = args[3] if len(args) > 3 else kwargs.get("cache")
                if torch.is_grad_enabled() and cache is None:
                    return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
                return _inner(*args, **kwargs)

            blk.forward = forward

        def undo() -> None:
            for blk in blocks:
                blk.__dict__.pop("forward", None)

        return undo
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.gradient_checkpointing_disable
    raise UnsupportedError(f"activation checkpointing: {type(model).__name__} has no `blocks` list and no "
                           "gradient_checkpointing_enable()")


def _recompute_stops_early(model: nn.Module) -> bool:
    """Whether the checkpointed blocks' recompute skips their FFN output projection (flops.recomputed_forward_flops):
    torch's early stop is on and the block ends in `x + W_out(h)`: an Andromeda block without DeepNorm or
    dropout, a transformers Llama decoder layer. Other models are charged the whole block forward."""
    from torch.utils import checkpoint

    if getattr(checkpoint, "_enable_checkpoint_early_stop", None) is False:  # None (the default) or True: on
        return False
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "deepnorm"):
        return not cfg.deepnorm and cfg.dropout == 0
    return getattr(getattr(model, "config", None), "model_type", None) == "llama"


def _peak_rss_mib() -> float | None:
    """The process's peak resident set size so far (its high-water mark), or None without `resource`."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / MiB if sys.platform == "darwin" else rss * 1024 / MiB


@dataclass
class TrainResult:
    history: list[dict[str, float]]  # one entry per step: step (1-based), loss, lr, grad_norm, times...
    evals: list[dict[str, float]]  # one entry per validation: step, and what the eval function returned
    resumed_from: int | None  # the step the run resumed from, or None for a fresh run
    info: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains `model` for cfg.steps optimizer steps on batches from `batches(position)`.

    batches(position) -> (batch, seq_len) token ids for micro-batch `position` (0, 1, 2, ...);
    loss_fn(tokens) -> scalar mean next-token loss (default: lm_loss of model(tokens));
    evaluate() -> dict of validation metrics (e.g. val_loss, val_ppl), run in eval mode, no grad.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        batches: Callable[[int], torch.Tensor],
        *,
        loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        evaluate: Callable[[], dict[str, float]] | None = None,
        device: torch.device | str = "cpu",
        facts=None,
        peak_tflops: float | None = None,
        log: Callable[[str], None] | None = None,
        attention_recompute: bool | None = None,
    ):
        self.model, self.cfg, self.batches = model, cfg, batches
        self.device = torch.device(device)
        self.loss_fn = loss_fn or self._default_loss
        self.evaluate = evaluate
        self.facts, self.peak_tflops = facts, peak_tflops
        self.log = log or (lambda msg: None)
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.schedule = WarmupCosine(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.step = 0
        self.position = 0  # micro-batches consumed
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.resumed_from: int | None = None
        # model FLOPs (MFU) and, with activation checkpointing, hardware FLOPs (HFU: + the blocks' forward again)
        self.flops_per_step = self.hardware_flops_per_step = None
        if facts is not None:
            if attention_recompute is None:  # the kernel the model runs: 2.5x or 2x attention backward
                from andromeda.measure.recompute import model_attention_recompute

                attention_recompute = model_attention_recompute(model, self.device, self._math_dtype())
            tokens = (cfg.batch * cfg.grad_accum, cfg.seq_len)
            step = train_step_flops(facts, *tokens, attention_recompute=attention_recompute)
            self.flops_per_step = step.total
            if cfg.activation_checkpointing:
                again = recomputed_forward_flops(facts, *tokens, early_stop=_recompute_stops_early(model))
                self.hardware_flops_per_step = step.total + again.total
        self.attention_recompute = attention_recompute
        torch.manual_seed(cfg.seed)  # dropout and anything else random in the steps; restored on resume

    def _math_dtype(self) -> torch.dtype:
        """The dtype attention runs in: the autocast dtype, else the model's parameters'."""
        if self.cfg.precision != "fp32":
            return torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return next(iter(self.model.parameters()), torch.empty(0)).dtype

    def _default_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        from andromeda.model import lm_loss

        return lm_loss(self.model(tokens), tokens)

    # ---- checkpoints --------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / STATE_FILE if self.cfg.checkpoint_dir else None

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "version": 1,
            "step": self.step,
            "data_position": self.position,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng,
            "history": self.history,
            "evals": self.evals,
            "config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        mine = dataclasses.asdict(self.cfg)
        for k, v in saved.items():
            if k not in _RESUME_FREE and mine.get(k) != v:
                raise ConfigError(f"training: the checkpoint was made with {k}={v!r}, this run has {mine.get(k)!r}; "
                                  "resume with the same settings or start in another checkpoint_dir")
        if state["step"] > self.cfg.steps:
            raise ConfigError(f"training: the checkpoint is at step {state['step']}, past steps={self.cfg.steps}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.position = int(state["step"]), int(state["data_position"])
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.resumed_from = self.step

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path is not None else self.state_path
        if target is None:
            raise ConfigError("training: no checkpoint_dir to save into")
        return save_state(self.state_dict(), target)

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the checkpoint at `path` (default: checkpoint_dir/state.pt) if it exists; True if loaded."""
        target = Path(path) if path is not None else self.state_path
        if target is None or not target.is_file():
            return False
        self.load_state_dict(load_state(target))
        self.log(f"resumed from step {self.step} ({target})")
        return True

    # ---- the loop ----------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        fwd_s = bwd_s = 0.0
        loss_sum = 0.0
        with Stopwatch(dev) as whole:
            self.optimizer.zero_grad(set_to_none=True)
            for _ in range(cfg.grad_accum):
                tokens = self.batches(self.position).to(dev, non_blocking=True)
                self.position += 1
                with Stopwatch(dev) as sw, self._autocast():
                    loss = self.loss_fn(tokens)
                fwd_s += sw.elapsed_s
                with Stopwatch(dev) as sw:
                    scaled = loss / cfg.grad_accum
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                bwd_s += sw.elapsed_s
                loss_sum += float(loss.detach())
            with Stopwatch(dev) as sw:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(_unique_params(self.model), cfg.grad_clip or math.inf)
                lr = self.optimizer.param_groups[0]["lr"]
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.scheduler.step()
            opt_s = sw.elapsed_s
        self.step += 1
        step_s = whole.elapsed_s
        rec = {
            "step": self.step,
            "loss": loss_sum / cfg.grad_accum,
            "lr": lr,
            "grad_norm": float(norm),
            "step_ms": step_s * 1e3,
            "forward_ms": fwd_s * 1e3,
            "backward_ms": bwd_s * 1e3,
            "optimizer_ms": opt_s * 1e3,
            "data_ms": max(0.0, step_s - fwd_s - bwd_s - opt_s) * 1e3,
            "tokens_per_s": cfg.tokens_per_step / step_s,
        }
        if dev.type == "cuda":
            rec["peak_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / MiB
        elif (rss := _peak_rss_mib()) is not None:
            rec["peak_rss_mib"] = rss
        if self.flops_per_step is not None:
            rec["tflops"] = self.flops_per_step / step_s / 1e12
            if self.peak_tflops:
                rec["mfu"] = rec["tflops"] / self.peak_tflops
        if self.hardware_flops_per_step is not None:
            rec["hardware_tflops"] = self.hardware_flops_per_step / step_s / 1e12
            if self.peak_tflops:
                rec["hfu"] = rec["hardware_tflops"] / self.peak_tflops
        if self.scaler is not None:
            rec["loss_scale"] = float(self.scaler.get_scale())
        return rec

    def _validate(self) -> None:
        if self.evaluate is None:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.evaluate()
        finally:
            self.model.train(was_training)
        self.evals.append({"step": self.step, **{k: float(v) for k, v in out.items()}})
        self.log(f"step {self.step}/{self.cfg.steps} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()))

    def run(self, until: int | None = None) -> TrainResult:
        """Train to step `until` (default cfg.steps), validating and checkpointing on schedule.

        A run stopped in the middle (Ctrl-C, a crash) resumes from its last checkpoint: a step cut
        short leaves an inconsistent state, so none is saved then; set checkpoint_every.
        """
        cfg = self.cfg
        stop = cfg.steps if until is None else min(until, cfg.steps)
        undo = enable_activation_checkpointing(self.model) if cfg.activation_checkpointing else None
        was_training = self.model.training
        self.model.train()
        try:
            while self.step < stop:
                rec = self.train_step()
                if not math.isfinite(rec["loss"]) and self.scaler is None:
                    raise FloatingPointError(f"training: the loss is {rec['loss']} at step {self.step}; "
                                             "lower lr or use fp32/bf16")
                self.history.append(rec)
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    since = self.step - (self.step - 1) % cfg.log_every  # the first step after the last line
                    self.log(progress_line([h for h in self.history if h["step"] >= since], cfg.steps))
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    self._validate()
                if cfg.checkpoint_dir and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last):
                    self.save()
        finally:
            if undo is not None:
                undo()
            self.model.train(was_training)
        return TrainResult(self.history, self.evals, self.resumed_from,
                           info={"optimizer": type(self.optimizer).__name__, "precision": cfg.precision})


__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "WarmupCosine", "make_optimizer", "adamw8bit_unavailable",
    "enable_activation_checkpointing", "STATE_FILE",
]
