"""training: a short pre-training run of the model on a data source, with its curves.

The step is train/'s Trainer with the entry's speed options (precision incl. bf16-master, fused AdamW,
compile: blocks, fused_ce, checkpointing) and health metrics (health_every, spike_window, spike_sigma).

One record per logged step (params {step}): loss (mean over the steps since the last record),
learning rate, gradient norm, tokens/s, step-time split (forward, backward, optimizer, data; CUDA
events inside the step, read at log time), peak memory (peak_allocated_mib on CUDA, the process's peak
RSS peak_rss_mib elsewhere), TFLOP/s and MFU when the device's peak is known (model FLOPs, backward per
the attention kernel; the peak of the precision's math dtype: bf16 for bf16 and bf16-master), and
mfu_measured_peak against the matmul rate measured once per run on the device in that dtype; with
activation checkpointing also hardware_tflops, HFU and hfu_measured_peak (the recompute counted), and
the validation metrics at validation steps. With health_every > 0 a step record also counts the spikes
detected in its interval (metric spikes; info.spikes names each one's layer) and holds the per-layer
gradient norms and block output statistics of the interval's health step (info.layer_grad_norm,
info.activations). Then one final record (params {step, final: true}) with the summary: final train
loss, validation perplexity and bits per byte, the entropy floor and val_ppl_over_floor when the data
is synthetic, median tokens/s, MFU and HFU, the spike count, total time; its samples hold the loss of
every step. The final peak_mib is the CUDA allocator's peak; on other devices it is left out
(info["peak_mib"] says why) and the process's peak RSS is rss_peak_mib.

compile: blocks compiles one graph per block shape and sequence length (and per block class), all on
one shared function: a run over several models and lengths passes torch._dynamo's default recompile
limit (8), past which dynamo silently runs the rest eagerly. While such a case trains the limit is
raised to RECOMPILE_LIMIT (torch._dynamo.config.patch: scoped to the case, restored after).

Each case starts from the model as built and leaves it so (the weights are restored after training
and, under bf16-master, the parameters' dtypes too), so sweep points and later scenarios do not see
each other's training. With
checkpoint_dir, state is saved to <checkpoint_dir>/<case id>/state.pt every checkpoint_every
steps and at the end, a case finds its checkpoint and resumes from it exactly, and an Andromeda
model's final weights are saved beside it (model/: config.json + model.safetensors, loadable
with load_checkpoint).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from andromeda.errors import ConfigError
from andromeda.measure.memory import track_memory
from andromeda.measure.recompute import model_attention_impl
from andromeda.measure.stats import summarize
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length
from andromeda.scenarios.config.training import TrainingConfig
from andromeda.scenarios.perplexity import evaluate, open_cached
from andromeda.train.loop import TrainConfig, Trainer, adamw8bit_unavailable

# per-step fields summarized per logged interval: by median (times, rates) or by max (memory)
_MEDIAN = ("step_ms", "forward_ms", "backward_ms", "optimizer_ms", "data_ms", "tflops", "mfu", "mfu_measured_peak",
           "hardware_tflops", "hfu", "hfu_measured_peak")
_MAX = ("peak_allocated_mib", "peak_rss_mib")
# the manifest fields that are TrainConfig fields of the same name
_TRAIN_KEYS = ("steps", "batch", "seq_len", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
               "beta1", "beta2", "eps", "grad_clip", "optimizer", "fused_adamw", "precision", "compile", "fused_ce",
               "checkpointing", "activation_checkpointing", "health_every", "spike_window", "spike_sigma",
               "log_every", "eval_every", "checkpoint_every")
RECOMPILE_LIMIT = 64  # graphs per compiled function while a case compiles (dynamo's default: 8)
_MATH_DTYPE = {"bf16": torch.bfloat16, "bf16-master": torch.bfloat16, "fp16": torch.float16}


def _train_config(p: dict, ckpt: Path | None, seed: int) -> TrainConfig:
    return TrainConfig(**{k: p[k] for k in _TRAIN_KEYS}, checkpoint_dir=str(ckpt) if ckpt else None, seed=seed)


def _spans(history: list[dict], evals: list[dict], log_every: int) -> list[tuple[int, list[dict]]]:
    """(step, the steps since the previous record) at every log_every-th step, the last step, and every
    validation step."""
    marks = sorted({h["step"] for h in history if h["step"] % log_every == 0} | {e["step"] for e in evals}
                   | ({history[-1]["step"]} if history else set()))
    out, prev = [], 0
    for step in marks:
        span = [h for h in history if prev < h["step"] <= step]
        if span:
            out.append((step, span))
            prev = step
    return out


def step_records(history: list[dict], evals: list[dict], log_every: int) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) at every log_every-th step, the last step, and every validation step."""
    by_step = {e["step"]: e for e in evals}
    out = []
    for step, span in _spans(history, evals, log_every):
        last = span[-1]
        seconds = sum(h["step_ms"] for h in span) / 1e3
        m = {
            "loss": float(np.mean([h["loss"] for h in span])),
            "loss_last": last["loss"],
            "lr": last["lr"],
            "grad_norm": last["grad_norm"],
            "tokens_per_s": sum(h["tokens_per_s"] * h["step_ms"] / 1e3 for h in span) / seconds,
        }
        for k in _MEDIAN:
            vals = [h[k] for h in span if k in h]
            if vals:
                m[k] = float(np.median(vals))
        for k in _MAX:
            vals = [h[k] for h in span if k in h]
            if vals:
                m[k] = float(max(vals))
        if step in by_step:
            m.update({k: v for k, v in by_step[step].items() if k != "step"})
        out.append((step, m))
    return out


def span_health(span: list[dict]) -> dict:
    """The health readings of an interval's steps, for its record's info: the per-layer gradient norms and block
    output statistics of its last health step (health_step), and every spike detected in it."""
    info: dict = {}
    read = [h for h in span if "activations" in h or "layer_grad_norm" in h]
    at = next((h for h in reversed(read) if "activations" in h), None)  # the interval's health step
    if at is not None:
        info["health_step"] = at["step"]
        info["activations"] = at["activations"]
        if "layer_grad_norm" in at:
            info["layer_grad_norm"] = at["layer_grad_norm"]
    spikes = [s for h in span for s in h.get("spikes", [])]
    if spikes:
        info["spikes"] = spikes
    return info


@contextlib.contextmanager
def recompile_room(compiles: bool, limit: int = RECOMPILE_LIMIT):
    """torch._dynamo's recompile limit at least `limit` inside (when `compiles`), restored on exit: every block
    shape, length and block class is a graph of one shared compiled function (train/regional.py)."""
    if not compiles:
        yield
        return
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # older torch
    with dynamo_config.patch(**{name: max(getattr(dynamo_config, name), limit)}):
        yield


def measured_matmul_tflops(ctx, precision: str) -> float | None:
    """The n=8192 matmul rate of the device in the precision's math dtype (bf16 for bf16 and bf16-master), measured
    once per run (kept in ctx.extra["matmul_tflops"]); None off CUDA."""
    dtype = _MATH_DTYPE.get(precision, ctx.dtype)
    cache = ctx.extra.setdefault("matmul_tflops", {})
    key = str(dtype).removeprefix("torch.")
    if key not in cache:
        if ctx.device.type != "cuda":
            return None
        from andromeda.measure.floors import matmul_tflops
        from andromeda.measure.timing import TimingConfig

        cache[key] = matmul_tflops(ctx.device, 8192, dtype, timing=TimingConfig(
            warmup=5, min_runs=20, max_runs=200, budget_s=1.0, target_rel_ci=0.01))
    return cache[key]


def _per_measured_peak(history: list[dict], matmul: float | None) -> None:
    """MFU and HFU against the measured matmul rate, beside the datasheet's, in each step's entry."""
    if not matmul:
        return
    for h in history:
        if "tflops" in h:
            h["mfu_measured_peak"] = h["tflops"] / matmul
        if "hardware_tflops" in h:
            h["hfu_measured_peak"] = h["hardware_tflops"] / matmul


@register("training")
class Training:
    Config = TrainingConfig

    def run(self, bundle, p, ctx):
        if p["optimizer"] == "adamw8bit" and (reason := adamw8bit_unavailable(ctx.device)):
            return ctx.skip(reason)
        eval_len = p["eval_seq_len"] or p["seq_len"]
        for n in (p["seq_len"], eval_len):
            if (reason := check_length(bundle, n)) is not None:
                return ctx.skip(reason)
        data = open_cached(p["data"], bundle.tokenizer, True)
        val = data.documents("val")
        probe = data.train_batch(1, p["seq_len"], 0, ctx.seed)
        if int(probe.max()) >= bundle.facts.vocab:
            raise ConfigError(f"data: token id {int(probe.max())} is outside the model's vocabulary "
                              f"({bundle.facts.vocab} tokens)")
        ckpt = Path(p["checkpoint_dir"]) / ctx.case.case_id if p["checkpoint_dir"] else None
        cfg = _train_config(p, ckpt, ctx.seed)
        model = bundle.model
        initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        def batches(position: int) -> torch.Tensor:
            return torch.from_numpy(data.train_batch(cfg.batch, cfg.seq_len, position, ctx.seed))

        scored: dict[str, Any] = {}  # what the last validation scored of the split (eval_max_tokens may cut it)

        def validate() -> dict[str, float]:
            m, vinfo = evaluate(bundle, val, seq_len=eval_len, batch=max(1, cfg.batch // 2),
                                max_tokens=p["eval_max_tokens"], device=ctx.device, n_boot=200, seed=ctx.seed)
            scored.clear()
            scored.update({k: int(m[k]) for k in ("tokens_scored", "tokens_total", "documents_whole",
                                                    "documents_total")}, warnings=vinfo.get("warnings", []))
            out = {"val_loss": m["cross_entropy_nats"], "val_ppl": m["ppl"]}
            if "bits_per_byte" in m:
                out["val_bits_per_byte"] = m["bits_per_byte"]
            return out

        dtypes = [(q, q.dtype) for q in model.parameters()]  # bf16-master casts them in place
        peak = ctx.peak_for_precision(p["precision"])
        trainer, wrap_info = None, {}
        try:
            trainer = Trainer(model, cfg, batches, loss_fn=None if cfg.fused_ce else bundle.loss, evaluate=validate,
                              device=ctx.device, facts=bundle.facts, peak_tflops=peak, log=ctx.log,
                              compile_backend=p["compile_backend"])
            trainer.resume()
            with track_memory(ctx.device) as mem, recompile_room(cfg.compile != "none"), trainer.wrapped():
                wrap_info = dict(trainer.wrappers.info) if trainer.wrappers is not None else {}
                result = trainer.run()
                if trainer.wrappers is not None:  # a full-graph trace that fell back says so during the run
                    wrap_info = dict(trainer.wrappers.info)
            math_dtype = trainer._math_dtype()
            flops = {"flops_per_step": trainer.flops_per_step, "hardware_flops_per_step":
                     trainer.hardware_flops_per_step, "attention_recompute": trainer.attention_recompute}
            _give_back_dtypes(dtypes, trainer)  # the trained weights in the model's own dtype, to save
            saved = _save_model(model, ckpt)
        finally:
            _give_back_dtypes(dtypes, trainer)
            trainer = None  # the optimizer state and float32 masters go before the weights are reloaded
            model.load_state_dict(initial)
            model.eval()
        matmul = measured_matmul_tflops(ctx, cfg.precision)
        _per_measured_peak(result.history, matmul)
        records = []
        spans = dict(_spans(result.history, result.evals, cfg.log_every))
        for step, m in step_records(result.history, result.evals, cfg.log_every):
            health = span_health(spans[step])
            if cfg.health_every:
                m["spikes"] = float(len(health.get("spikes", [])))
            records.append(ctx.record(m, params={"step": step}, info=health))
        final, info = _summary(result, data.facts, mem, cfg, ctx)
        if scored:  # a validation cut short by eval_max_tokens says so in the record and the report
            cut = scored.pop("warnings")
            info["validation_scored"] = scored
            if cut:
                old = info.get("warnings", [])
                info["warnings"] = ([old] if isinstance(old, str) else old) + [f"validation: {w}" for w in cut]
        info.update(data=data.spec, resumed_from=result.resumed_from, **result.info, **flops,
                    attn_impl=model_attention_impl(model, ctx.device, math_dtype), peak_tflops=peak,
                    matmul_tflops_measured=matmul)
        if wrap_info:
            info["blocks"] = wrap_info
        if saved:
            info["model_checkpoint"] = str(saved)
        samples = {"loss": [h["loss"] for h in result.history],
                   "tokens_per_s": [h["tokens_per_s"] for h in result.history]}
        records.append(ctx.record(final, params={"step": cfg.steps, "final": True}, samples=samples, info=info))
        return records


def _give_back_dtypes(dtypes: list[tuple[torch.nn.Parameter, torch.dtype]], trainer) -> None:
    """Each parameter in its dtype before the case (bf16-master made them bfloat16): the float32 master where the
    Trainer has one (the trained weights, unrounded; no copy when the dtype was float32), else the parameter cast."""
    masters = {}
    if trainer is not None and trainer.master is not None:
        masters = {id(q): m for q, m in zip(trainer.master.params, trainer.master.masters, strict=True)}
    with torch.no_grad():
        for q, dtype in dtypes:
            if q.dtype != dtype:
                q.data = masters.get(id(q), q.data).detach().to(dtype)


def _save_model(model, ckpt: Path | None) -> Path | None:
    from andromeda.model import Andromeda, save_checkpoint

    if ckpt is None or not isinstance(model, Andromeda):
        return None
    return save_checkpoint(model, ckpt / "model")


def _summary(result, facts: dict, mem, cfg: TrainConfig, ctx) -> tuple[dict[str, float], dict]:
    hist = result.history
    tail = hist[-min(len(hist), cfg.log_every):]
    m: dict[str, float] = {
        "final_train_loss": float(np.mean([h["loss"] for h in tail])),
        "train_s": sum(h["step_ms"] for h in hist) / 1e3,
        "tokens_trained": float(cfg.tokens_per_step * len(hist)),
    }
    info: dict = {}
    timed = hist[1:] if len(hist) > 1 else hist  # the first step pays one-time costs
    m.update(summarize([h["tokens_per_s"] for h in timed]).to_metrics("tokens_per_s"))
    for k in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms"):
        m[k] = float(np.median([h[k] for h in timed]))
    if all("mfu" in h for h in timed):
        m.update(summarize([h["mfu"] for h in timed]).to_metrics("mfu"))
    else:
        info["mfu"] = (f"not computed: the peak TFLOP/s of {ctx.device.type} is unknown; "
                       "set peak_tflops in the manifest")
    if all("mfu_measured_peak" in h for h in timed):
        m.update(summarize([h["mfu_measured_peak"] for h in timed]).to_metrics("mfu_measured_peak"))
    if all("tflops" in h for h in timed):
        m["tflops"] = float(np.median([h["tflops"] for h in timed]))
    if cfg.checkpointing != "none":  # hardware FLOPs: what the checkpointed blocks recompute in backward
        if all("hardware_tflops" in h for h in timed):
            m["hardware_tflops"] = float(np.median([h["hardware_tflops"] for h in timed]))
        if all("hfu" in h for h in timed):
            m.update(summarize([h["hfu"] for h in timed]).to_metrics("hfu"))
        else:
            info["hfu"] = (f"not computed: the peak TFLOP/s of {ctx.device.type} is unknown; "
                           "set peak_tflops in the manifest")
        if all("hfu_measured_peak" in h for h in timed):
            m["hfu_measured_peak"] = float(np.median([h["hfu_measured_peak"] for h in timed]))
    if cfg.health_every:
        m["spikes"] = float(len(result.info.get("spikes", [])))
    if ctx.device.type == "cuda" and mem.peak_allocated_mib is not None:
        m["peak_mib"] = mem.peak_allocated_mib
    else:  # never the process RSS under this name
        info["peak_mib"] = (f"not measured on {ctx.device.type}: no allocator peak over a training run; "
                            "the process's peak RSS is rss_peak_mib")
    if mem.rss_peak_mib is not None:
        m["rss_peak_mib"] = mem.rss_peak_mib
    if result.evals:
        last = result.evals[-1]
        m.update({k: v for k, v in last.items() if k != "step"})
        m["val_ppl_best"] = min(e["val_ppl"] for e in result.evals)
    if facts.get("floor_ppl"):
        m["floor_ppl"] = float(facts["floor_ppl"])
        m["entropy_bits_per_byte"] = float(facts["entropy_bits_per_byte"])
        if "val_ppl" in m:
            m["val_ppl_over_floor"] = m["val_ppl"] / m["floor_ppl"]
    if not math.isfinite(m["final_train_loss"]):
        info["warnings"] = "the training loss is not finite"
    return m, info


__all__ = ["TrainingConfig", "Training", "step_records", "span_health", "recompile_room", "measured_matmul_tflops",
           "RECOMPILE_LIMIT"]
