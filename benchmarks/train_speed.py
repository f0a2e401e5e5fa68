r"""Issue 26: the training step of an Andromeda preset, change by change, side by side in one run on one CUDA GPU.

    python benchmarks/train_speed.py [--preset andromeda] [--seq 2048 8192] [--json out.json]
    python benchmarks/train_speed.py --smoke --json /tmp/smoke.json      # CPU, the tiny preset, seconds
    python benchmarks/train_speed.py --json t.json --variants +bf16-master+fused-adamw +selective-ckpt llama-fast \
        --profile                                                          # ...and where each row's GPU time goes

Rows, each at every --seq with --tokens-per-step tokens a step (the micro-batch is the largest that fits: halved
on out-of-memory, the rest as gradient accumulation), the Trainer of andromeda.train driving every one:

  fp32-eager               float32 weights and compute, eager blocks, torch's attention (--baseline-attn, flex),
                           unfused loss, AdamW (foreach); --fp32-tokens a step (one sequence: it is slow)
  bf16-autocast            + bf16 autocast
  +attn-kernels            + the model's attention kernels (attn_backend auto: the Triton/Gluon kernel on CUDA)
  +compile-blocks          + regional torch.compile of each block
  +fused-ce                + the fused, chunked LM head + cross-entropy
  +bf16-master+fused-adamw + bf16 weights with float32 masters and torch's fused AdamW: "the fast step"
  +selective-ckpt / +full-ckpt   the fast step with selective / full activation checkpointing (HFU counts it);
                           selective keeps the matmul and attention-kernel outputs (the Triton kernel is a custom
                           op: a compiled block stays one graph); +selective-ckpt-eager measures selective
                           checkpointing on eager blocks
  +health                  the fast step with the health metrics on (--health-every); overhead_pct vs the fast step
  +gemm-autotune / +coord-descent   the fast step with its blocks compiled with inductor's matmul autotuning
                           (Triton templates against cuBLAS, epilogues fused) / coordinate-descent tuning of the
                           generated pointwise and reduction kernels (train_variants.py)
  qk-fused / qk-unfused    the fast step with QK-norm + rotary + xPos in our fused kernel (backends/qk_rope.py) /
                           as PyTorch ops, whatever TritonTuning.fused_qk's default: the two side by side
  adamw8bit                the fast step with bitsandbytes' 8-bit AdamW (over the float32 masters)
  llama-fast               the matched-work transformers Llama (sources hf:matched:<preset>, SDPA) in the fast step

For each: the median step time over --steps timed steps after --warmup (CUDA events inside the step: no host
synchronization; raw samples kept) with IQR, tokens/s, TFLOP/s, MFU against the datasheet bf16 dense peak and
against the bf16 matmul rate measured in this run (HFU the same with the recompute counted), peak memory
(torch.cuda.max_memory_allocated over the timed steps), the step-time split (forward, backward, optimizer, data
and host gaps). Then the loss over --loss-steps steps of the fast step against the fp32-eager step on the same
data and initial weights (relative difference of the mean loss), and the LM head + loss alone (forward +
backward at --head-tokens tokens): unfused, ours, ours compiled, and liger-kernel's / cut-cross-entropy's fused
kernels where they import.

--profile: after each row's timed steps, --profile-steps (2) more under torch.profiler (CUDA kernels on a GPU; on a
CPU the ops' self time, so the code path is testable); the row's "profile" holds their time per step by category
(matmul, attention, elementwise_norm, loss_head, optimizer, copy_memset, communication, other: ms, share, kernel
count; the same by phase), the top --profile-top kernels with their counts, and on a GPU the time some kernel ran
(busy_ms) beside the profiled steps' wall time (step_ms). benchmarks/profile_split.py says what goes where. A
side-by-side table of the categories closes the run. The timed rows' numbers are the steps before: unprofiled.

Rows run in priority order (the fast step and the Llama first, then the loss check, then the ladder) and no new
row starts past --budget-s: the rest are recorded as skipped. The JSON (rewritten after every row) leads with
the git commit, device, versions and floors (measure.floors.provenance).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from andromeda.data import open_data
from andromeda.measure import floors
from andromeda.measure.env import collect_env
from andromeda.measure.facts import facts_from_config
from andromeda.measure.recompute import model_attention_impl
from andromeda.measure.timing import TimingConfig, time_fn
from andromeda.model import PRESETS, Andromeda, from_name
from andromeda.train import TrainConfig, Trainer
from andromeda.train.fused_ce import linear_cross_entropy, reference_loss
from andromeda.train.optim import adamw8bit_unavailable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
import profile_split  # noqa: E402
from train_variants import BY_NAME, FIRST, LADDER, THEN, Variant, inductor_backend, kernel_settings  # noqa: E402


def _cleanup(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()



class Bench:
    def __init__(self, args, dev: torch.device):
        self.a, self.dev = args, dev
        self.t0 = time.perf_counter()
        self.data = open_data("synthetic:markov?n_symbols=256&successors=16")
        self.micro: dict[tuple[int, str], int] = {}  # (seq, model) -> the last micro-batch that fitted
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        matmul = floors.matmul_tflops(dev, n=8192) if dev.type == "cuda" else floors.matmul_tflops(
            dev, n=256, timing=TimingConfig(warmup=1, min_runs=3, max_runs=5, budget_s=0.5))
        self.floors = {**floors.datasheet(name), "matmul_bf16_tflops": matmul}
        self.res = {**floors.provenance(collect_env(), self.floors), "args": vars(args), "rows": [],
                    "loss_trajectory": None, "head_loss": []}

    def left_s(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.res["elapsed_s"] = time.perf_counter() - self.t0
        if self.a.json:
            Path(self.a.json).write_text(json.dumps(self.res, indent=2, default=str))

    # ---- one model in one configuration ---------------------------------------------------------------
    def build(self, v: Variant, seq: int):
        torch.manual_seed(0)
        if v.model == "llama":
            from andromeda.sources.models import build

            with torch.device(self.dev):
                bundle = build(f"hf:matched:{self.a.preset}?max_seq_len={max(seq, 8)}", self.dev, torch.float32)
            return bundle.model.train(), bundle.facts, {"matched": bundle.info.get("matched")}
        attn = self.a.baseline_attn if v.attn == "baseline" else "auto"
        cfg = from_name(self.a.preset, attn_backend=attn,
                        max_seq_len=max(seq, PRESETS[self.a.preset].get("max_seq_len", seq)))
        with torch.device(self.dev):
            model = Andromeda(cfg)
        return model.train(), facts_from_config(cfg), {}

    def trainer(self, v: Variant, seq: int, micro: int, accum: int, steps: int, batches, lr: float, warmup: int = 0):
        model, facts, info = self.build(v, seq)
        health = self.a.health_every if v.extra.get("health") else 0
        cfg = TrainConfig(**{**dict(steps=steps, batch=micro, grad_accum=accum, seq_len=seq, lr=lr, warmup_steps=warmup,
                                    grad_clip=1.0, log_every=10**6, eval_every=0, health_every=health), **v.train})
        backend = self.a.compile_backend
        if v.extra.get("inductor") and backend == "inductor":
            backend = inductor_backend(v.extra["inductor"])
            info["inductor_options"] = v.extra["inductor"]
        t = Trainer(model, cfg, batches, device=self.dev, facts=facts, peak_tflops=self.floors["datasheet_bf16_tflops"],
                    compile_backend=backend)
        return t, info

    def _pool(self, micro: int, seq: int, count: int) -> list[torch.Tensor]:
        return [torch.from_numpy(self.data.train_batch(micro, seq, i)).to(self.dev) for i in range(count)]

    def _timed(self, v: Variant, seq: int, micro: int, accum: int) -> dict:
        with kernel_settings(v):
            return self._timed_steps(v, seq, micro, accum)

    def _timed_steps(self, v: Variant, seq: int, micro: int, accum: int) -> dict:
        a = self.a
        pool = self._pool(micro, seq, 2 * accum)
        t, info = self.trainer(v, seq, micro, accum, a.warmup + a.steps, lambda pos: pool[pos % len(pool)], 1e-4)
        with t.wrapped():
            info.update(t.wrappers.info if t.wrappers is not None else {})
            w0 = time.perf_counter()
            for _ in range(a.warmup):
                t.run_step()
            warm = t.collect()
            warm_s = time.perf_counter() - w0
            for _ in range(a.steps):
                t.run_step()
            recs = t.collect()
            prof = self._profile(t) if a.profile else None
        info.update(attn_impl=model_attention_impl(t.model, self.dev, t._math_dtype()),
                    optimizer=type(t.optimizer).__name__)
        out = self._metrics(t, recs, warm_s, info)
        out["losses"] = [r["loss"] for r in warm + recs]  # every step, warm-up included: same data in every row
        if prof is not None:
            out["profile"] = prof
        return out

    def _profile(self, t: Trainer) -> dict:
        """--profile-steps more steps under torch.profiler: their time by category (profile_split.split). A failure
        is the profile's, recorded in it; the row's timed numbers stand."""
        from torch.profiler import ProfilerActivity, profile

        n, cuda = self.a.profile_steps, self.dev.type == "cuda"
        try:
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                for _ in range(n):
                    t.run_step()
                recs = t.collect()  # waits for the device: every kernel ends inside the profile
            p0 = time.perf_counter()
            out = profile_split.split(prof, n, self.dev.type, self.a.profile_top)
            out.update(status="ok", step_ms=float(np.median([r["step_ms"] for r in recs])),
                       parse_s=time.perf_counter() - p0)
            return out
        except Exception as e:  # noqa: BLE001 - out of memory included: the profile's failure, not the row's
            traceback.print_exc()
            return {"status": "error", "message": f"{type(e).__name__}: {str(e).splitlines()[0][:700]}"}

    def _metrics(self, t: Trainer, recs: list[dict], warm_s: float, info: dict) -> dict:
        ms = np.array([r["step_ms"] for r in recs])
        med = float(np.median(ms))
        q1, q3 = (float(x) for x in np.percentile(ms, [25, 75]))
        tflops = t.flops_per_step / (med / 1e3) / 1e12 if t.flops_per_step else None
        hw = t.hardware_flops_per_step or t.flops_per_step
        hw_tflops = hw / (med / 1e3) / 1e12 if hw else None
        sheet, meas = self.floors["datasheet_bf16_tflops"], self.floors["matmul_bf16_tflops"]
        peak = recs[-1].get("peak_allocated_mib")  # CUDA: the allocator's peak over the timed steps
        out = {
            "micro_batch": t.cfg.batch, "grad_accum": t.cfg.grad_accum, "tokens_per_step": t.cfg.tokens_per_step,
            "step_ms_median": med, "step_ms_q1": q1, "step_ms_q3": q3, "step_ms_mean": float(ms.mean()),
            "step_ms_samples": ms.tolist(), "tokens_per_s": t.cfg.tokens_per_step / (med / 1e3), "tflops": tflops,
            "mfu_datasheet": tflops / sheet if tflops and sheet else None,
            "mfu_measured": tflops / meas if tflops and meas else None,
            "hardware_tflops": hw_tflops, "hfu_datasheet": hw_tflops / sheet if hw_tflops and sheet else None,
            "hfu_measured": hw_tflops / meas if hw_tflops and meas else None,
            "flops_per_step": t.flops_per_step, "hardware_flops_per_step": hw,
            "peak_mib": peak, "peak_rss_mib": recs[-1].get("peak_rss_mib"), "warmup_s": warm_s,
            "loss_first": recs[0]["loss"], "loss_last": recs[-1]["loss"],
            "info": info,
        }
        for k in ("forward_ms", "backward_ms", "optimizer_ms", "data_ms"):
            out[k] = float(np.median([r[k] for r in recs]))
        return out

    def row(self, v: Variant, seq: int) -> dict:
        a = self.a
        row = {"variant": v.name, "adds": v.adds, "seq": seq, "status": "ok"}
        self.res["rows"].append(row)
        if self.left_s() <= 0:
            row.update(status="skipped", message=f"the run's budget ({a.budget_s:.0f} s) was spent")
            return row
        if v.train.get("optimizer") == "adamw8bit" and (reason := adamw8bit_unavailable(self.dev)):
            row.update(status="skipped", message=reason)
            return row
        tokens = (a.fp32_tokens or seq) if v.name == "fp32-eager" else a.tokens_per_step
        n = max(1, tokens // seq)
        key = (seq, v.model)
        micro = a.micro_batch or (n if v.train.get("checkpointing") else min(n, self.micro.get(key, n)))
        tried = []
        while True:
            micro = max(d for d in range(1, min(micro, n) + 1) if n % d == 0)  # micro-batches divide the step
            oom = False
            try:
                row.update(self._timed(v, seq, micro, n // micro))
                self.micro[key] = max(self.micro.get(key, 0), micro) if not v.train.get("checkpointing") else \
                    self.micro.get(key, micro)
                break
            except torch.OutOfMemoryError:
                oom = True  # cleaned up below, once the exception (and the frames it holds) is gone
            except Exception as e:  # noqa: BLE001 - one row's failure is recorded, the run goes on
                traceback.print_exc()
                row.update(status="error", message=f"{type(e).__name__}: {str(e).splitlines()[0][:700]}")
                break
            if oom:
                tried.append(micro)
                _cleanup(self.dev)
                if micro == 1 or a.micro_batch:
                    row.update(status="oom", message=f"out of memory at micro-batches {tried} of {seq} tokens")
                    break
                micro //= 2
        if tried:
            row["oom_micro_batches"] = tried
        _cleanup(self.dev)
        print(_line(row), flush=True)
        if row.get("profile"):
            print(profile_split.brief(row["profile"]), flush=True)
        self.save()
        return row

    # ---- the loss over many steps: fast step vs fp32 eager, same data and initial weights -----------------
    def loss_trajectory(self, seq: int) -> None:
        a = self.a
        n = max(1, (a.loss_tokens or seq) // seq)
        out = {"seq": seq, "steps": a.loss_steps, "tokens_per_step": n * seq, "status": "ok"}
        self.res["loss_trajectory"] = out
        if self.left_s() <= 0 or not a.loss_steps:
            out.update(status="skipped", message="budget spent" if a.loss_steps else "--loss-steps 0")
            return

        def batches(pos):
            return torch.from_numpy(self.data.train_batch(n, seq, 10_000 + pos)).to(self.dev)

        out["variant"] = a.loss_variant
        for name, key in (("fp32-eager", "fp32"), (a.loss_variant, "fast")):
            try:
                t, _ = self.trainer(BY_NAME[name], seq, n, 1, a.loss_steps, batches, a.lr, max(1, a.loss_steps // 10))
                with kernel_settings(BY_NAME[name]), t.wrapped():
                    for _ in range(a.loss_steps):
                        t.run_step()
                    out[key] = [r["loss"] for r in t.collect()]
            except torch.OutOfMemoryError:
                out.update(status="oom", message=f"{name}: out of memory at {n} sequence(s) of {seq} tokens")
                return
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                out.update(status="error", message=f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:700]}")
                return
            finally:
                t = None
                _cleanup(self.dev)
        ref, fast = np.array(out["fp32"]), np.array(out["fast"])
        out.update(mean_fp32=float(ref.mean()), mean_fast=float(fast.mean()),
                   rel_diff_mean=float(abs(fast.mean() - ref.mean()) / ref.mean()),
                   max_rel_diff_step=float(np.max(np.abs(fast - ref) / ref)),
                   rel_diff_last10=float(abs(fast[-10:].mean() - ref[-10:].mean()) / ref[-10:].mean()))
        print(f"loss over {a.loss_steps} steps of {n} x {seq} tokens: fast {out['mean_fast']:.4f} vs fp32 eager "
              f"{out['mean_fp32']:.4f} mean, relative difference {out['rel_diff_mean']:.3%} (last 10 steps "
              f"{out['rel_diff_last10']:.3%}, largest single step {out['max_rel_diff_step']:.3%})", flush=True)
        self.save()

    # ---- the LM head + loss alone --------------------------------------------------------------------------
    def head_loss(self) -> None:
        cfg = from_name(self.a.preset)
        n, d, v = self.a.head_tokens, cfg.dim, cfg.num_tokens
        g = torch.Generator(device=self.dev).manual_seed(0)
        h = torch.randn(n, d, device=self.dev, generator=g).mul_(0.5).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(v, d, device=self.dev, generator=g) * 0.02).to(torch.bfloat16).requires_grad_()
        y = torch.randint(0, v, (n,), device=self.dev, generator=g)
        impls = {"unfused": lambda: reference_loss(h, w, y), "ours": lambda: linear_cross_entropy(h, w, y),
                 "ours_chunk2048": lambda: linear_cross_entropy(h, w, y, chunk_rows=2048),
                 "ours_compiled": lambda: linear_cross_entropy(h, w, y, compiled=True, backend=self.a.compile_backend)}
        impls.update(_external_impls(h, w, y, self.dev))
        ref = None
        for name, fn in impls.items():
            r = {"impl": name, "tokens": n, "dim": d, "vocab": v}
            if isinstance(fn, str):
                r.update(status="skipped", message=fn)
                self.res["head_loss"].append(r)
                continue
            try:
                def step(fn=fn):
                    h.grad = w.grad = None
                    fn().backward()
                _cleanup(self.dev)
                base = torch.cuda.memory_allocated(self.dev) if self.dev.type == "cuda" else 0
                step()
                if self.dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.dev)
                timing = time_fn(step, self.dev, TimingConfig(warmup=1, min_runs=5, max_runs=20, budget_s=2.0))
                with torch.no_grad():
                    loss = float(fn())
                ref = loss if ref is None else ref
                r.update(status="ok", fwd_bwd_ms=timing.median_ms, samples_ms=timing.samples_ms, loss=loss,
                         loss_rel_diff_vs_unfused=abs(loss - ref) / abs(ref),
                         peak_extra_mib=(torch.cuda.max_memory_allocated(self.dev) - base) / 2**20
                         if self.dev.type == "cuda" else None)
            except torch.OutOfMemoryError:
                r.update(status="oom")
            except Exception as e:  # noqa: BLE001
                r.update(status="error", message=f"{type(e).__name__}: {str(e).splitlines()[0][:700]}")
            self.res["head_loss"].append(r)
            said = (f"{r['fwd_bwd_ms']:8.2f} ms fwd+bwd, +{r['peak_extra_mib'] or 0:,.0f} MiB, loss {r['loss']:.5f}"
                    if r["status"] == "ok" else r["status"] + " " + r.get("message", ""))
            print(f"head+loss {name:16s} {said}", flush=True)
        impls.clear()  # the tensors go with the closures
        _cleanup(self.dev)
        self.save()


def _external_impls(h, w, y, dev) -> dict:
    """liger-kernel's and cut-cross-entropy's fused linear cross-entropy where they import (Triton, CUDA)."""
    out = {}
    if dev.type != "cuda":
        return {"liger": "needs CUDA (Triton kernels)", "cut_cross_entropy": "needs CUDA (Triton kernels)"}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        out["liger"] = lambda: liger(w, h, y)
    except ImportError as e:
        out["liger"] = f"not importable: {e} (pip install --no-deps liger-kernel: pure Python over Triton)"
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        out["cut_cross_entropy"] = lambda: cce(h, w, y)
    except ImportError as e:
        out["cut_cross_entropy"] = f"not importable: {e} (pip install --no-deps cut-cross-entropy)"
    return out


def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def _line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['seq']:6d} {r['variant']:26s} {r['status']}: {r.get('message', '')}"
    return (f"{r['seq']:6d} {r['variant']:26s} {r['micro_batch']:3d}x{r['grad_accum']:<3d} "
            f"{r['step_ms_median']:9.1f} [{r['step_ms_q1']:.1f}-{r['step_ms_q3']:.1f}] {r['tokens_per_s']:11,.0f} "
            f"{_pct(r['mfu_datasheet'])} {_pct(r['mfu_measured'])} {_pct(r['hfu_datasheet'])} "
            f"{(r['peak_mib'] or 0) / 1024:7.1f} {r['forward_ms']:7.1f} {r['backward_ms']:7.1f} "
            f"{r['optimizer_ms']:6.1f}")


HEADER = (f"{'seq':>6s} {'variant':26s} {'mb x ga':7s} {'step ms':>9s} {'[IQR]':>13s} {'tokens/s':>11s} "
          f"{'MFU%':>5s} {'MFUm%':>5s} {'HFU%':>5s} {'peakGiB':>7s} {'fwd ms':>7s} {'bwd ms':>7s} {'opt ms':>6s}")


def _health_overhead(rows: list[dict]) -> dict:
    """Per seq: the +health row's mean step time over the fast step's, in percent (means: the interval's step
    is one of the timed ones)."""
    out = {}
    for seq in {r["seq"] for r in rows}:
        got = {r["variant"]: r for r in rows if r["seq"] == seq and r["status"] == "ok"}
        if "+health" in got and FIRST[0] in got:
            out[str(seq)] = 100 * (got["+health"]["step_ms_mean"] / got[FIRST[0]]["step_ms_mean"] - 1)
    return out


def _loss_vs_fast(rows: list[dict]) -> None:
    """Each row's mean loss over its steps against the fast step's at the same seq, where both saw the same tokens
    (same tokens a step and steps, the same initial weights): a change that altered the math shows here."""
    fast = {r["seq"]: r for r in rows if r["variant"] == FIRST[0] and r["status"] == "ok"}
    for r in rows:
        f = fast.get(r["seq"])
        if r["status"] != "ok" or f is None or r is f or r["variant"] == "llama-fast" \
                or r["tokens_per_step"] != f["tokens_per_step"] or len(r["losses"]) != len(f["losses"]):
            continue
        ref = float(np.mean(f["losses"]))
        r["loss_rel_diff_vs_fast"] = abs(float(np.mean(r["losses"])) - ref) / ref
        if r["loss_rel_diff_vs_fast"] > 0.02:
            print(f"warning: {r['variant']} at {r['seq']}: mean loss {100 * r['loss_rel_diff_vs_fast']:.1f}% away "
                  "from the fast step's on the same tokens", flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="andromeda", choices=sorted(PRESETS))
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--tokens-per-step", type=int, default=32768)
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="sequences per micro-batch (default: the largest that fits)")
    ap.add_argument("--fp32-tokens", type=int, default=None,
                    help="tokens a step of fp32-eager (default: one sequence)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--loss-steps", type=int, default=50)
    ap.add_argument("--loss-variant", default=FIRST[0], choices=list(BY_NAME),
                    help="the row whose step the loss check runs against the fp32 eager step")
    ap.add_argument("--loss-tokens", type=int, default=None, help="tokens a step of the loss check (default: one "
                    "sequence of the first --seq: the fp32 step is slow)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the loss check")
    ap.add_argument("--health-every", type=int, default=10)
    ap.add_argument("--head-tokens", type=int, default=16384)
    ap.add_argument("--baseline-attn", default="flex", help="attention backend of the first two rows")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(BY_NAME), help="a subset of the rows")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no new row starts after this many seconds")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows")
    ap.add_argument("--profile", action="store_true",
                    help="after each row's timed steps, --profile-steps more under torch.profiler: device time by "
                         "category and the top kernels in the row's JSON, a table of the categories at the end")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--profile-top", type=int, default=15, help="kernels listed per profiled row")
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny preset, a few steps: checks the script runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.seq, args.tokens_per_step, args.warmup, args.steps = "tiny", [32], 64, 1, 2
        args.loss_steps, args.head_tokens, args.health_every = min(args.loss_steps, 6), 64, 2
        args.loss_tokens = args.tokens_per_step  # the shape of the timed rows: their compiled graphs serve it
        args.baseline_attn = "sdpa"  # FlexAttention runs unfused on a CPU: slow, and not what is checked here
        args.device, args.compile_backend = args.device or "cpu", "eager"  # dynamo traces; no code generated
    return args


def main(argv=None) -> int:
    args = parse(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda" and not args.smoke:
        sys.exit("train_speed.py: needs a CUDA GPU (or --smoke for a CPU check of the script)")
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))  # every row and length is a new graph
    b = Bench(args, dev)
    print(f"{b.res['device']}: datasheet bf16 {b.floors['datasheet_bf16_tflops']} TFLOP/s, measured bf16 matmul "
          f"{b.floors['matmul_bf16_tflops']:.1f} TFLOP/s; preset {args.preset}, {args.tokens_per_step} tokens a step",
          flush=True)
    b.head_loss()
    chosen = set(args.variants or BY_NAME)
    print(HEADER, flush=True)
    for seq in args.seq:
        for name in FIRST:
            if name in chosen:
                b.row(BY_NAME[name], seq)
    b.loss_trajectory(args.seq[0])
    for name in THEN:
        for seq in args.seq:
            if name in chosen:
                b.row(BY_NAME[name], seq)
    order = {v.name: i for i, v in enumerate(LADDER)}
    b.res["rows"].sort(key=lambda r: (r["seq"], order[r["variant"]]))
    b.res["health_overhead_pct"] = _health_overhead(b.res["rows"])
    _loss_vs_fast(b.res["rows"])
    b.save()
    print("\nside by side (MFU% datasheet peak, MFUm% measured matmul rate, HFU% datasheet with recompute):")
    print(HEADER)
    for r in b.res["rows"]:
        print(_line(r))
    if lines := profile_split.table(b.res["rows"]):
        src = next(r["profile"]["source"] for r in b.res["rows"] if r.get("profile", {}).get("status") == "ok")
        print(f"\nprofiled: device time per step by category ({src}; ms, share, ms minus the first column's at "
              "that seq):")
        print("\n".join(lines))
    for r in b.res["rows"]:
        if r.get("profile", {}).get("status") == "error":
            print(f"profile of {r['variant']} at {r['seq']} failed: {r['profile']['message']}")
    for seq, pct in b.res["health_overhead_pct"].items():
        print(f"health metrics overhead at {seq}: {pct:+.2f}% of the fast step's mean time")
    print(f"done in {b.res['elapsed_s']:.0f} s" + (f"; JSON: {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
