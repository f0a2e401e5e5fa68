"""A small, exact pre-training loop: AdamW (fused or foreach; or bitsandbytes 8-bit AdamW on CUDA), fp32,
bf16/fp16 autocast (GradScaler for fp16) or bf16 weights with float32 master weights, gradient clipping,
warm-up + cosine schedule, gradient accumulation, regional torch.compile, a fused chunked LM head + loss,
full or selective activation checkpointing, health metrics with a spike detector, validation every N steps,
resumable checkpoints.

No host synchronization inside a step: loss, gradient norms and activation statistics stay on the device and
the phases are timed with CUDA events (train/clock.py); run() reads them when it logs, validates or saves
(collect()), train_step() right after its step. Every step's record holds its loss, learning rate, gradient
norm (before clipping), tokens/s, TFLOP/s and MFU (model FLOPs, backward per the attention kernel: measure.flops;
MFU when the device's peak is known), with activation checkpointing also hardware_tflops and HFU (the
recompute counted), the step-time split (forward, backward, optimizer, and the rest as data), peak memory (the
CUDA allocator's peak since the last collect; on other devices the process's peak RSS so far), and with health
metrics on, per-layer gradient norms every step, block output statistics every health_every steps and the
spikes detected (train/health.py).

Resuming is exact: a checkpoint holds the model, optimizer, scheduler and GradScaler states, the float32 master
weights (bf16-master), the torch RNG states, the step, the data position (micro-batches consumed; batches are a
pure function of the position) and the history so far, saved with torch.save as tensors and plain containers
only, loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from andromeda.errors import ConfigError
from andromeda.measure.flops import forward_flops, recomputed_forward_flops, train_step_flops
from andromeda.train.clock import PhaseClock
from andromeda.train.config import TrainConfig
from andromeda.train.fused_ce import fused_lm_loss
from andromeda.train.health import ActivationStats, GradNorms, SpikeDetector
from andromeda.train.optim import adamw8bit_unavailable, make_optimizer, unique_params
from andromeda.train.precision import MasterWeights
from andromeda.train.progress import progress_line
from andromeda.train.regional import (
    ATTENTION_SAVED_BY_POLICY,
    BlockWrappers,
    enable_activation_checkpointing,
    recompute_stops_early,
)
from andromeda.train.state import load_state, save_state

MiB = 2**20
STATE_FILE = "state.pt"
# fields that may differ between a checkpoint and the run resuming it (they do not change the math)
_RESUME_FREE = ("steps", "log_every", "eval_every", "checkpoint_every", "checkpoint_dir", "compile", "health_every",
                "spike_window", "spike_sigma")


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
    history: list[dict[str, Any]]  # one entry per step: step (1-based), loss, lr, grad_norm, times...
    evals: list[dict[str, float]]  # one entry per validation: step, and what the eval function returned
    resumed_from: int | None  # the step the run resumed from, or None for a fresh run
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Pending:
    """A step whose values are still on the device."""

    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    layers: torch.Tensor | None
    activations: torch.Tensor | None
    clock: PhaseClock
    loss_scale: float | None = None


class Trainer:
    """Trains `model` for cfg.steps optimizer steps on batches from `batches(position)`.

    batches(position) -> (batch, seq_len) token ids for micro-batch `position` (0, 1, 2, ...);
    loss_fn(tokens) -> scalar mean next-token loss (default: lm_loss of model(tokens)); with cfg.fused_ce the
    Trainer computes the loss from the model's hidden states and head itself, and refuses a loss_fn;
    evaluate() -> dict of validation metrics (e.g. val_loss, val_ppl), run in eval mode, no grad.
    compile_backend: torch.compile's backend for cfg.compile (tests pass a cheap one).

    Under precision bf16-master the Trainer casts the model's parameters to bfloat16 in place (the float32
    masters start from their values before the cast; master_state_dict() gives them back).
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
        compile_backend: str | Callable = "inductor",
    ):
        if cfg.fused_ce and loss_fn is not None:
            raise ConfigError("training.fused_ce: the fused LM head + loss is computed from the model's hidden states "
                              "and head; pass no loss_fn (or set fused_ce: false)")
        self.model, self.cfg, self.batches = model, cfg, batches
        self.device = torch.device(device)
        self.loss_fn = loss_fn or self._default_loss
        self.evaluate = evaluate
        self.facts, self.peak_tflops = facts, peak_tflops
        self.log = log or (lambda msg: None)
        self.compile_backend = compile_backend
        params = [p for p in unique_params(model) if p.requires_grad]
        self.master = MasterWeights(params, torch.bfloat16) if cfg.precision == "bf16-master" else None
        opt_params = self.master.masters if self.master is not None else params
        self.optimizer = make_optimizer(model, cfg, self.device, params=opt_params)
        self.schedule = WarmupCosine(cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.grad_norms = GradNorms(model, opt_params, per_layer=cfg.health_every > 0, named_like=params)
        self.activation_stats = ActivationStats(model) if cfg.health_every else None
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_sigma)
        self.wrappers: BlockWrappers | None = None
        self.step = 0
        self.position = 0  # micro-batches consumed
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, float]] = []
        self.resumed_from: int | None = None
        self._pending: list[_Pending] = []
        self._count_flops(model, facts, attention_recompute)
        torch.manual_seed(cfg.seed)  # dropout and anything else random in the steps; restored on resume

    # ---- FLOPs --------------------------------------------------------------------------------
    def _count_flops(self, model, facts, attention_recompute) -> None:
        """Model FLOPs (MFU) and, with activation checkpointing, hardware FLOPs (HFU: + what is recomputed)."""
        cfg = self.cfg
        self.flops_per_step = self.hardware_flops_per_step = None
        self.attention_recompute = attention_recompute
        if facts is None:
            return
        from andromeda.measure.recompute import model_attention_impl, model_attention_recompute

        if attention_recompute is None:  # the kernel the model runs: 2.5x or 2x attention backward
            attention_recompute = model_attention_recompute(model, self.device, self._math_dtype())
        self.attention_recompute = attention_recompute
        tokens = (cfg.batch * cfg.grad_accum, cfg.seq_len)
        self.flops_per_step = train_step_flops(facts, *tokens, attention_recompute=attention_recompute).total
        if cfg.checkpointing == "full":  # a compiled block is recomputed whole: no early stop inside its graph
            early = cfg.compile == "none" and recompute_stops_early(model)
            again = recomputed_forward_flops(facts, *tokens, early_stop=early).total
            self.hardware_flops_per_step = self.flops_per_step + again
        elif cfg.checkpointing == "selective":  # matmul outputs are kept; attention if the policy saves its op
            impl = model_attention_impl(model, self.device, self._math_dtype())
            attention = forward_flops(facts, *tokens, lm_head="none").attention
            again = 0.0 if impl in ATTENTION_SAVED_BY_POLICY else attention
            self.hardware_flops_per_step = self.flops_per_step + again

    def _math_dtype(self) -> torch.dtype:
        """The dtype attention runs in: the autocast dtype, bf16 under bf16-master, else the parameters'."""
        cfg = self.cfg
        if cfg.precision in ("bf16", "bf16-master"):
            return torch.bfloat16
        if cfg.precision == "fp16":
            return torch.float16
        return next(iter(self.model.parameters()), torch.empty(0)).dtype

    def _default_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        from andromeda.model import lm_loss

        return lm_loss(self.model(tokens), tokens)

    # ---- checkpoints --------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / STATE_FILE if self.cfg.checkpoint_dir else None

    def state_dict(self) -> dict[str, Any]:
        self._collect_into_history()
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
            "master": self.master.state_dict() if self.master is not None else [],
            "rng": rng,
            "history": self.history,
            "evals": self.evals,
            "config": dataclasses.asdict(self.cfg),
        }

    def master_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the float32 master weights in place of the bf16 parameters (bf16-master)."""
        state = self.model.state_dict()
        if self.master is None:
            return state
        by_id = {id(p): m for p, m in zip(self.master.params, self.master.masters, strict=True)}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in by_id:
                state[name] = by_id[id(p)].detach()
        return state

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
        if self.master is not None:
            self.master.load_state_dict(state["master"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.position = int(state["step"]), int(state["data_position"])
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self._pending = []
        self.spikes = SpikeDetector(self.cfg.spike_window, self.cfg.spike_sigma)
        for h in self.history:  # the detector's windows as they were (spikes already recorded are not re-logged)
            self.spikes.update(h["step"], h["loss"], h["grad_norm"], h.get("layer_grad_norm"))
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

    # ---- the step -----------------------------------------------------------------------------
    def _autocast(self):
        dtype = self.cfg.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)

    def _loss(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cfg.fused_ce:
            return fused_lm_loss(self.model, tokens, compiled=self.cfg.compile == "blocks",
                                 backend=self.compile_backend)
        return self.loss_fn(tokens)

    @contextlib.contextmanager
    def wrapped(self):
        """Regional compile and activation checkpointing on the model's blocks for the steps inside (run() uses it;
        so does a caller of run_step()). Undone on exit; the compiled code stays cached for the next time."""
        cfg = self.cfg
        if self.wrappers is not None or (cfg.compile == "none" and cfg.checkpointing == "none"):
            yield
            return
        self.wrappers = BlockWrappers(self.model, compile=cfg.compile == "blocks", checkpointing=cfg.checkpointing,
                                      backend=self.compile_backend)
        try:
            yield
        finally:
            self.wrappers.undo()
            self.wrappers = None

    def run_step(self) -> None:
        """One optimizer step, queued on the device without waiting for it: collect() returns its record."""
        cfg, dev = self.cfg, self.device
        if dev.type == "cuda" and not self._pending:  # the peak of the steps until the next collect()
            torch.cuda.reset_peak_memory_stats(dev)
        clock = PhaseClock(dev)
        clock.mark("data")
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not None:
            self.model.zero_grad(set_to_none=True)
        health = bool(cfg.health_every) and (self.step + 1) % cfg.health_every == 0
        loss_sum, acts = None, None
        for i in range(cfg.grad_accum):
            tokens = self.batches(self.position).to(dev, non_blocking=True)
            self.position += 1
            if health and i == 0:
                self.activation_stats.start()
            clock.mark("forward")
            with self._autocast():
                loss = self._loss(tokens)
            if health and i == 0:
                acts = self.activation_stats.stop()
            clock.mark("backward")
            scaled = loss / cfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if self.master is not None:
                self.master.accumulate_grads()
            clock.mark("data")
            loss = loss.detach().float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        clock.mark("optimizer")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm, layers = self.grad_norms()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.grad_norms.params, cfg.grad_clip, norm, foreach=True)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.master is not None:
            self.master.copy_to_params()
        self.scheduler.step()
        clock.mark("end")
        self.step += 1
        self._pending.append(_Pending(self.step, lr, loss_sum / cfg.grad_accum, norm, layers, acts, clock,
                                      float(self.scaler.get_scale()) if self.scaler is not None else None))

    def collect(self) -> list[dict[str, Any]]:
        """Wait for the queued steps; their records (not added to the history), the spike detector fed."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        peak = torch.cuda.max_memory_allocated(self.device) / MiB if self.device.type == "cuda" else _peak_rss_mib()
        return [self._record(p, peak) for p in pending]

    def _record(self, p: _Pending, peak: float | None) -> dict[str, Any]:
        cfg = self.cfg
        ms = p.clock.durations_ms()
        step_s = ms["total"] / 1e3
        head = torch.stack([p.loss, p.grad_norm.float()])
        vals = (torch.cat([head, p.layers]) if p.layers is not None else head).tolist()
        rec: dict[str, Any] = {
            "step": p.step,
            "loss": vals[0],
            "lr": p.lr,
            "grad_norm": vals[1],
            "step_ms": ms["total"],
            "forward_ms": ms.get("forward", 0.0),
            "backward_ms": ms.get("backward", 0.0),
            "optimizer_ms": ms.get("optimizer", 0.0),
            "data_ms": ms.get("data", 0.0),
            "tokens_per_s": cfg.tokens_per_step / step_s if step_s > 0 else math.inf,
        }
        if peak is not None:
            rec["peak_allocated_mib" if self.device.type == "cuda" else "peak_rss_mib"] = peak
        if self.flops_per_step is not None and step_s > 0:
            rec["tflops"] = self.flops_per_step / step_s / 1e12
            if self.peak_tflops:
                rec["mfu"] = rec["tflops"] / self.peak_tflops
        if self.hardware_flops_per_step is not None and step_s > 0:
            rec["hardware_tflops"] = self.hardware_flops_per_step / step_s / 1e12
            if self.peak_tflops:
                rec["hfu"] = rec["hardware_tflops"] / self.peak_tflops
        if p.loss_scale is not None:
            rec["loss_scale"] = p.loss_scale
        layers = dict(zip(self.grad_norms.groups, vals[2:], strict=True)) if p.layers is not None else None
        if layers is not None:
            rec["layer_grad_norm"] = layers
        if p.activations is not None:
            stats = p.activations.tolist()  # (blocks, 3)
            rec["activations"] = {name: dict(zip(ActivationStats.STATS, row, strict=True))
                                  for name, row in zip(self.activation_stats.names, stats, strict=True)}
        if cfg.health_every:
            spikes = self.spikes.update(p.step, rec["loss"], rec["grad_norm"], layers)
            if spikes:
                rec["spikes"] = [s.to_dict() for s in spikes]
                for s in spikes:
                    self.log(s.message())
        return rec

    def train_step(self) -> dict[str, Any]:
        """One optimizer step, waited for: its record (earlier queued steps are collected and dropped)."""
        self.run_step()
        return self.collect()[-1]

    # ---- the loop -----------------------------------------------------------------------------
    def _collect_into_history(self) -> None:
        for rec in self.collect():
            if not math.isfinite(rec["loss"]) and self.scaler is None:
                raise FloatingPointError(f"training: the loss is {rec['loss']} at step {rec['step']}; "
                                         "lower lr or use fp32/bf16")
            self.history.append(rec)

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
        was_training = self.model.training
        self.model.train()
        try:
            with self.wrapped():
                while self.step < stop:
                    self.run_step()
                    last = self.step == cfg.steps
                    log = self.step % cfg.log_every == 0 or last
                    evaluate = (cfg.eval_every and self.step % cfg.eval_every == 0) or last
                    save = cfg.checkpoint_dir and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                                                   or last)
                    if log or evaluate or save or self.step == stop:
                        self._collect_into_history()
                    if log:
                        since = self.step - (self.step - 1) % cfg.log_every  # the first step after the last line
                        self.log(progress_line([h for h in self.history if h["step"] >= since], cfg.steps))
                    if evaluate:
                        self._validate()
                    if save:
                        self.save()
        finally:
            self._collect_into_history()
            self.model.train(was_training)
        info = {"optimizer": type(self.optimizer).__name__, "precision": cfg.precision, "fused_ce": cfg.fused_ce,
                "compile": cfg.compile, "checkpointing": cfg.checkpointing,
                "spikes": [s.to_dict() for s in self.spikes.spikes]}
        return TrainResult(self.history, self.evals, self.resumed_from, info=info)


__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "WarmupCosine", "make_optimizer", "adamw8bit_unavailable",
    "enable_activation_checkpointing", "STATE_FILE",
]
