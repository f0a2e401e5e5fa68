"""training: a short pre-training run of the model on a data source, with its curves.

One record per logged step (params {step}): loss (mean over the steps since the last record),
learning rate, gradient norm, tokens/s, step-time split (forward, backward, optimizer; measured
between device synchronizations), peak memory (peak_allocated_mib on CUDA, the process's peak RSS
peak_rss_mib elsewhere), TFLOP/s and MFU when the device's peak is known (model FLOPs, backward per
the attention kernel), with activation checkpointing also hardware_tflops and HFU (the recomputed
forward counted), and the validation metrics at validation steps. Then one final record (params
{step, final: true}) with the summary: final train loss, validation perplexity and bits per byte, the
entropy floor and val_ppl_over_floor when the data is synthetic, median tokens/s, MFU and HFU, total
time; its samples hold the loss of every step. The final peak_mib is the CUDA allocator's peak; on
other devices it is left out (info["peak_mib"] says why) and the process's peak RSS is rss_peak_mib.

Each case starts from the model as built and leaves it so (the weights are restored after
training), so sweep points and later scenarios do not see each other's training. With
checkpoint_dir, state is saved to <checkpoint_dir>/<case id>/state.pt every checkpoint_every
steps and at the end, a case finds its checkpoint and resumes from it exactly, and an Andromeda
model's final weights are saved beside it (model/: config.json + model.safetensors, loadable
with load_checkpoint).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from andromeda.errors import ConfigError
from andromeda.measure.memory import track_memory
from andromeda.measure.stats import summarize
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length
from andromeda.scenarios.config.training import TrainingConfig
from andromeda.scenarios.perplexity import evaluate, open_cached
from andromeda.train.loop import TrainConfig, Trainer, adamw8bit_unavailable

# per-step fields summarized per logged interval: by median (times, rates) or by max (memory)
_MEDIAN = ("step_ms", "forward_ms", "backward_ms", "optimizer_ms", "data_ms", "tflops", "mfu", "hardware_tflops",
           "hfu")
_MAX = ("peak_allocated_mib", "peak_rss_mib")


def _train_config(p: dict, ckpt: Path | None, seed: int) -> TrainConfig:
    keys = ("steps", "batch", "seq_len", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
            "beta1", "beta2", "eps", "grad_clip", "optimizer", "precision", "activation_checkpointing",
            "log_every", "eval_every", "checkpoint_every")
    return TrainConfig(**{k: p[k] for k in keys}, checkpoint_dir=str(ckpt) if ckpt else None, seed=seed)


def step_records(history: list[dict], evals: list[dict], log_every: int) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) at every log_every-th step, the last step, and every validation step."""
    by_step = {e["step"]: e for e in evals}
    marks = sorted({h["step"] for h in history if h["step"] % log_every == 0} | set(by_step)
                   | ({history[-1]["step"]} if history else set()))
    out, prev = [], 0
    for step in marks:
        span = [h for h in history if prev < h["step"] <= step]
        if not span:
            continue
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
        prev = step
    return out


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

        trainer = Trainer(model, cfg, batches, loss_fn=bundle.loss, evaluate=validate, device=ctx.device,
                          facts=bundle.facts, peak_tflops=ctx.peak_for_precision(p["precision"]), log=ctx.log)
        try:
            trainer.resume()
            with track_memory(ctx.device) as mem:
                result = trainer.run()
            saved = _save_model(model, ckpt)
        finally:
            model.load_state_dict(initial)
            model.eval()
        records = [ctx.record(m, params={"step": step}) for step, m in step_records(
            result.history, result.evals, cfg.log_every)]
        final, info = _summary(result, data.facts, mem, cfg, ctx)
        if scored:  # a validation cut short by eval_max_tokens says so in the record and the report
            cut = scored.pop("warnings")
            info["validation_scored"] = scored
            if cut:
                old = info.get("warnings", [])
                info["warnings"] = ([old] if isinstance(old, str) else old) + [f"validation: {w}" for w in cut]
        info.update(data=data.spec, resumed_from=result.resumed_from, **result.info)
        if saved:
            info["model_checkpoint"] = str(saved)
        samples = {"loss": [h["loss"] for h in result.history],
                   "tokens_per_s": [h["tokens_per_s"] for h in result.history]}
        records.append(ctx.record(final, params={"step": cfg.steps, "final": True}, samples=samples, info=info))
        return records


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
    if all("tflops" in h for h in timed):
        m["tflops"] = float(np.median([h["tflops"] for h in timed]))
    if cfg.activation_checkpointing:  # hardware FLOPs: the checkpointed blocks' forward runs again in backward
        if all("hardware_tflops" in h for h in timed):
            m["hardware_tflops"] = float(np.median([h["hardware_tflops"] for h in timed]))
        if all("hfu" in h for h in timed):
            m.update(summarize([h["hfu"] for h in timed]).to_metrics("hfu"))
        else:
            info["hfu"] = (f"not computed: the peak TFLOP/s of {ctx.device.type} is unknown; "
                           "set peak_tflops in the manifest")
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


__all__ = ["TrainingConfig", "Training", "step_records"]
