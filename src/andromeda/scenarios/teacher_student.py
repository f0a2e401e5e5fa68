"""teacher_student: a reference model (teacher) and a trained or changed one (student) side by side.

For each model: perplexity and bits per byte on the same data and windows, prefill tokens/s (a
forward pass over batch x seq_len), decode tokens/s (cached greedy decoding, prefill excluded),
KV-cache bytes per token (measured from the filled cache; the formula for models without one) and
peak memory (weights + the most the evaluation and decoding added). Then a comparison record:
student / teacher for each of them (the report's LaTeX table has the same layout as the
source document's teacher/student table).

teacher and student are model sources (andromeda:<preset>, hf:..., xt:...) or {source, checkpoint}:
the source is built, then the Andromeda checkpoint directory (config.json + weights, as
save_checkpoint or the training scenario writes it) is loaded into it. Without `student`, the
manifest model being run is the student.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.measure.facts import kv_cache_bytes_per_token
from andromeda.measure.memory import module_bytes, track_memory
from andromeda.scenarios import register
from andromeda.scenarios.common import random_tokens
from andromeda.scenarios.config.teacher_student import ModelRef, TeacherStudentConfig
from andromeda.scenarios.decoding import Decoder
from andromeda.scenarios.perplexity import evaluate, open_cached
from andromeda.sources import models

MiB = 2**20
ROLES = ("teacher", "student")


def load_into(bundle, checkpoint: str | Path) -> None:
    """Load an Andromeda checkpoint's weights into a built bundle (same config required)."""
    from andromeda.model import Andromeda, ModelConfig, load_checkpoint

    if not isinstance(bundle.model, Andromeda):
        raise ConfigError(f"checkpoint: '{checkpoint}' is an Andromeda checkpoint; {bundle.source} is not an "
                          "Andromeda model")
    d = Path(checkpoint)
    cfg_file = d / "config.json"
    if cfg_file.is_file():
        saved = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
        diff = [k for k, v in saved.to_dict().items() if bundle.model.cfg.to_dict().get(k) != v]
        if diff:
            raise ConfigError(f"checkpoint: '{d}' was saved with a different config ({', '.join(diff)}); "
                              f"use the source it was trained from, e.g. andromeda:<preset>?{diff[0]}=...")
    loaded = load_checkpoint(d, device="cpu")
    ref = next(bundle.model.parameters())
    bundle.model.load_state_dict({k: v.to(ref.device) for k, v in loaded.state_dict().items()})
    bundle.info["checkpoint"] = str(d)


def _measure(bundle, p, ctx) -> tuple[dict[str, float], dict]:
    data = open_cached(p["data"], bundle.tokenizer, p["add_bos"])
    docs = data.documents("all")
    model = bundle.model
    weights = module_bytes(model)
    info: dict = {"data": data.spec}
    with track_memory(ctx.device) as mem:
        ppl, ppl_info = evaluate(bundle, docs, seq_len=p["seq_len"], stride=p["stride"], batch=p["batch"],
                                 max_tokens=p["max_tokens"], device=ctx.device, seed=ctx.seed)
        m = {k: ppl[k] for k in ("ppl", "ppl_ci_low", "ppl_ci_high", "cross_entropy_nats", "bits_per_byte",
                                 "floor_ppl") if k in ppl}
        info.update(ppl_info)
        # prefill throughput: one forward pass over batch x seq_len tokens
        tokens = random_tokens(bundle, p["batch"], p["seq_len"], ctx.device, ctx.seed)

        def prefill():
            with torch.inference_mode():
                bundle.logits(tokens)

        t = ctx.time(prefill)
        m["prefill_tokens_per_s"] = p["batch"] * p["seq_len"] / (t.median_ms / 1e3)
        # decode throughput: gen_len cached greedy steps after an untimed prefill
        B, P, G = p["decode_batch"], p["prompt_len"], p["gen_len"]
        prompt = random_tokens(bundle, B, P, ctx.device, ctx.seed)
        state: dict = {}

        def setup():
            dec = Decoder(bundle, B, P + G, use_cache=True)
            state["dec"], state["next"] = dec, dec.prefill(prompt).argmax(-1, keepdim=True)

        def decode():
            dec, nxt = state["dec"], state["next"]
            for _ in range(G):
                nxt = dec.step(nxt).argmax(-1, keepdim=True)

        try:
            t = ctx.time(decode, setup)
            m["decode_tokens_per_s"] = B * G / (t.median_ms / 1e3)
            dec = state["dec"]
            m["kv_bytes_per_token"] = dec.cache_bytes() / (B * (P + G))
            info["kv_bytes"] = "measured"
        except UnsupportedError as e:
            elem = torch.tensor([], dtype=ctx.dtype).element_size()
            m["kv_bytes_per_token"] = kv_cache_bytes_per_token(bundle.facts, elem)
            info["kv_bytes"] = f"analytic ({e})"
        state.clear()
    delta = mem.delta_peak_allocated_mib if ctx.device.type == "cuda" else mem.rss_delta_mib
    m["weights_mib"] = weights / MiB
    if delta is not None:
        m["peak_mib"] = weights / MiB + max(0.0, delta)
    m["params"] = float(bundle.facts.params)
    return m, info


@register("teacher_student")
class TeacherStudent:
    Config = TeacherStudentConfig

    def run(self, bundle, p, ctx):
        if p["prompt_len"] + p["gen_len"] > bundle.facts.max_seq_len or p["seq_len"] > bundle.facts.max_seq_len:
            return ctx.skip(f"seq_len {p['seq_len']} or prompt_len + gen_len {p['prompt_len'] + p['gen_len']} "
                            f"exceeds max_seq_len {bundle.facts.max_seq_len}")
        refs = {"teacher": ModelRef(**p["teacher"])}
        if p["student"] is not None:
            refs["student"] = ModelRef(**p["student"])
        results: dict[str, tuple[dict, dict]] = {}
        for role in ("student", "teacher"):  # the runner's model first, while nothing else is loaded
            ref = refs.get(role)
            if ref is None:
                b, name = bundle, bundle.source
            else:
                torch.manual_seed(ctx.seed)
                b, name = models.build(ref.source, ctx.device, ctx.dtype), ref.source
                if ref.checkpoint:
                    load_into(b, ref.checkpoint)
                    name = f"{ref.source} + {ref.checkpoint}"
            try:
                metrics, info = _measure(b, p, ctx)
            finally:
                if b is not bundle:
                    del b
                    gc.collect()
                    if ctx.device.type == "cuda":
                        torch.cuda.empty_cache()
            results[role] = (metrics, {**info, "model": name})
        records = [ctx.record(results[r][0], params={"role": r, "model": results[r][1]["model"]},
                              info=results[r][1]) for r in ROLES]
        t, s = results["teacher"][0], results["student"][0]
        ratio = {}
        for k in ("ppl", "bits_per_byte", "prefill_tokens_per_s", "decode_tokens_per_s", "kv_bytes_per_token",
                  "peak_mib", "params"):
            if k in t and k in s and t[k]:
                ratio[f"{k}_ratio"] = s[k] / t[k]
        if ratio.get("kv_bytes_per_token_ratio"):
            ratio["kv_reduction"] = 1.0 / ratio["kv_bytes_per_token_ratio"]
        records.append(ctx.record(ratio, params={"role": "comparison",
                                                 "model": f"{results['student'][1]['model']} / "
                                                          f"{results['teacher'][1]['model']}"},
                                  info={"ratios": "student / teacher; kv_reduction = teacher / student"}))
        return records


__all__ = ["TeacherStudentConfig", "TeacherStudent", "ModelRef", "load_into"]
