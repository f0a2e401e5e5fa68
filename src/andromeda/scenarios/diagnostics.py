"""diagnostics: model internals and the generated input suite, per layer and per component.

Probes (the sweep axis; each is one case):
  params       parameter counts: total, trainable, per component, per layer, shares
  activations  activation and activation-gradient statistics of each site (block output, attention
               output, feed-forward input / hidden / output, embedding)
  gradients    parameter-gradient statistics per (layer, component) and per layer, update/weight ratio
               after one optimizer step (the weights are restored), vanishing/exploding flags
  attention    per layer and head: entropy, max weight, span, weight histogram, heads paying
               attention, a heatmap; gradient statistics of q, k, v and the scores
  inputs       loss and perplexity per input class and length (the generated suite)
  sensitivity  KL of the next-token distribution at later positions after a one-token change
  robustness   loss vs noise rate (substitution, deletion, insertion)
  ambiguity    KL between predictions on the same span after two different contexts
Formulas: docs/diagnostics.md.
"""

from __future__ import annotations

import math

import torch

from andromeda.diagnostics import inputs as suite_mod
from andromeda.diagnostics import probes
from andromeda.diagnostics.api import Diagnostics, DiagnosticsOptions
from andromeda.diagnostics.attention import HIST_EDGES
from andromeda.diagnostics.gradients import GradThresholds
from andromeda.scenarios import register
from andromeda.scenarios.common import zero_grads
from andromeda.scenarios.config.diagnostics import PROBES, DiagnosticsConfig  # noqa: F401

STAT_METRICS = ("mean", "std", "min", "max", "abs_max", "rms", "l2_norm", "skewness", "kurtosis", "zero_frac",
                "saturated_frac", "dead_frac", "nan_count", "inf_count", "count")


def _stats_metrics(s: dict, prefix: str = "") -> dict[str, float]:
    """The statistics of a summary as metrics; undefined ones (e.g. kurtosis of a constant) are left out."""
    return {prefix + k: float(s[k]) for k in STAT_METRICS if isinstance(s.get(k), (int, float)) and math.isfinite(s[k])}


def _tokens(bundle, p, batch: int, step: int, ctx) -> torch.Tensor:
    rows = [suite_mod.make_input(p["input_class"], p["seq_len"], bundle.tokenizer, bundle.facts.vocab,
                                 seed=ctx.seed * 10007 + step * 101 + b).tokens for b in range(batch)]
    return torch.tensor(rows, device=ctx.device)


@register("diagnostics")
class DiagnosticsScenario:
    Config = DiagnosticsConfig

    def run(self, bundle, p, ctx):
        probe = p["probe"]
        limit = bundle.facts.max_seq_len
        if probe in ("activations", "gradients", "attention", "sensitivity", "robustness") and p["seq_len"] > limit:
            return ctx.skip(f"seq_len {p['seq_len']} exceeds the model's max_seq_len {limit}")
        return getattr(self, f"_{probe}")(bundle, p, ctx)

    # ---- internals ----------------------------------------------------------------------------------
    def _diag(self, bundle, p, **kw) -> Diagnostics:
        opts = DiagnosticsOptions(
            attn_layers=None if p["attn_layers"] is None else tuple(p["attn_layers"]),
            attn_heads=None if p["attn_heads"] is None else tuple(p["attn_heads"]),
            heatmap_len=p["heatmap_len"],
            heatmap_layers=None if p["heatmap_layers"] is None else tuple(p["heatmap_layers"]),
            attn_chunk=p["attn_chunk"], entropy_threshold=p["entropy_threshold"],
            max_weight_threshold=p["max_weight_threshold"], saturation=p["saturation"],
            thresholds=GradThresholds(p["vanishing_abs"], p["vanishing_rel"], p["exploding_abs"], p["exploding_rel"]),
        )
        return Diagnostics(bundle.model, opts.replace(**kw))

    def _passes(self, bundle, p, ctx, diag: Diagnostics) -> None:
        model = bundle.model
        for step in range(p["steps"]):
            zero_grads(model)
            tokens = _tokens(bundle, p, p["batch"], step, ctx)
            with diag.capture():
                bundle.loss(tokens).backward()
            ctx.progress(f"diagnostics {p['probe']}: pass {step + 1}/{p['steps']}")

    def _params(self, bundle, p, ctx):
        diag = Diagnostics(bundle.model, activations=False, activation_grads=False, param_grads=False,
                           attention=False, attention_grads=False)
        pc = diag.parameter_counts()
        info = {"tied": pc.tied} if pc.tied else {}
        recs = [ctx.record({"params": pc.total, "trainable_params": pc.trainable,
                            "non_embedding_params": pc.total - pc.embedding,
                            "trainable_pct": 100.0 * pc.trainable / pc.total if pc.total else math.nan,
                            "layers": len(diag.sites.layers)},
                           params={"layer": "all", "component": "all"}, info=info)]
        for comp, n in sorted(pc.by_component.items()):
            recs.append(ctx.record({"params": n, "trainable_params": pc.trainable_by_component.get(comp, 0),
                                    "share_pct": 100 * pc.share(n)},
                                   params={"layer": "all", "component": comp}))
        for layer, n in pc.by_layer.items():
            per = {c: v for (lay, c), v in pc.by_layer_component.items() if lay == layer}
            recs.append(ctx.record({"params": n, "share_pct": 100 * pc.share(n)},
                                   params={"layer": layer, "component": "all"}, info={"by_component": per}))
        return recs

    def _activations(self, bundle, p, ctx):
        diag = self._diag(bundle, p, param_grads=False, attention=False, attention_grads=False)
        self._passes(bundle, p, ctx, diag)
        zero_grads(bundle.model)
        rep = diag.report()
        recs = []
        for tensor, table in (("activation", rep.activations), ("gradient", rep.activation_grads)):
            for (layer, site), s in table.items():
                warn = []
                if s.get("nan_count") or s.get("inf_count"):
                    warn.append(f"{tensor} of layer {layer} {site}: {s['nan_count']} NaN, {s['inf_count']} Inf")
                recs.append(ctx.record(_stats_metrics(s), params={"layer": layer, "component": site, "tensor": tensor},
                                       info={"warnings": warn} if warn else None))
        return recs

    def _gradients(self, bundle, p, ctx):
        model = bundle.model
        diag = self._diag(bundle, p, activations=False, activation_grads=False, attention=False,
                          attention_grads=False)
        self._passes(bundle, p, ctx, diag)
        params = [q for q in model.parameters() if q.requires_grad]
        opt_cls = torch.optim.AdamW if p["optimizer"] == "adamw" else torch.optim.SGD
        opt = opt_cls(params, lr=p["lr"])
        diag.tracker.before_step()
        opt.step()
        diag.tracker.after_step(keep_snapshot=True)
        diag.tracker.restore()  # the model is shared with later cases: leave its weights as they were
        del opt
        zero_grads(model)
        rep = diag.report()
        t = rep.options.thresholds
        info = {"optimizer": p["optimizer"], "lr": p["lr"], "thresholds": t.__dict__}
        recs = []
        flags = rep.layer_flags
        for layer, s in rep.grads_by_layer.items():
            f = flags.get(layer, {})
            m = {"grad_norm": s.get("norm", math.nan), **_stats_metrics(s),
                 "vanishing": float(bool(f.get("vanishing"))), "exploding": float(bool(f.get("exploding")))}
            if "update_ratio" in s:
                m["update_ratio"] = s["update_ratio"]
            warn = [f"layer {layer}: gradients {'explode' if f['exploding'] else 'vanish'} "
                    f"(norm {f['grad_norm']:.3g}; thresholds {t.__dict__})"] if f.get("vanishing") or f.get(
                "exploding") else []
            recs.append(ctx.record(m, params={"layer": layer, "component": "all", "tensor": "param_grad"},
                                   info={**info, **({"warnings": warn} if warn else {})}))
        for (layer, comp), s in sorted(rep.grads_by_component.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            m = {"grad_norm": s.get("norm", math.nan), **_stats_metrics(s)}
            if "update_ratio" in s:
                m["update_ratio"] = s["update_ratio"]
            recs.append(ctx.record(m, params={"layer": layer, "component": comp, "tensor": "param_grad"}))
        return recs

    def _attention(self, bundle, p, ctx):
        diag = self._diag(bundle, p, activations=False, activation_grads=False, param_grads=False)
        self._passes(bundle, p, ctx, diag)
        zero_grads(bundle.model)
        rep = diag.report()
        recs = []
        reasons = "; ".join(f"layer {k}: {v}" if k != "all" else v for k, v in rep.attention_unavailable.items())
        if not rep.attention:
            return [ctx.record(status="skipped", message=f"attention metrics unavailable: {reasons or 'no layer'}",
                               params={"layer": "all", "component": "attention"},
                               info={"attention_unavailable": rep.attention_unavailable})]
        total_heads, attending = 0, 0
        for layer, a in sorted(rep.attention.items()):
            if "stats" in a:
                s = a["stats"]
                valid = [i for i, r in enumerate(s["rows"]) if r > 0]

                def mean(key, s=s, valid=valid):
                    vals = [s[key][i] for i in valid]
                    return sum(vals) / len(vals) if vals else math.nan

                total_heads += len(s["heads"])
                attending += s["heads_attending"]
                samples = {k: s[k] for k in ("entropy_norm_mean", "entropy_norm_std", "entropy_nats",
                                             "max_weight_mean", "span_tokens")}
                samples["concentrated"] = [float(c) for c in s["concentrated"]]
                samples["hist_counts"] = [c for row in s["hist"] for c in row]
                info = {"heads": s["heads"], "hist_edges": HIST_EDGES,
                        "hist_shape": [len(s["heads"]), len(HIST_EDGES) - 1]}
                if s["heatmap"] is not None:
                    hm = s["heatmap"]
                    samples["heatmap"] = [v for head in hm for row in head for v in row]
                    info["heatmap_shape"] = [len(hm), len(hm[0]), len(hm[0][0]) if hm[0] else 0]
                metrics = {
                    "entropy_norm_mean": mean("entropy_norm_mean"),
                    "entropy_norm_spread": mean("entropy_norm_std"),
                    "entropy_nats": mean("entropy_nats"),
                    "max_weight_mean": mean("max_weight_mean"),
                    "span_tokens": mean("span_tokens"),
                    "heads_attending": float(s["heads_attending"]),
                    "heads": float(len(s["heads"])),
                }
                recs.append(ctx.record(metrics, samples=samples, info=info,
                                       params={"layer": layer, "component": "attention", "tensor": "probs"}))
            for name, g in a.get("grads", {}).items():
                per_head = g.get("norm_per_head")
                recs.append(ctx.record(_stats_metrics(g), samples={"norm_per_head": per_head} if per_head else None,
                                       params={"layer": layer, "component": f"attn.{name}", "tensor": "gradient"}))
        if total_heads:
            recs.append(ctx.record({"heads_attending": float(attending), "heads": float(total_heads),
                                    "heads_attending_frac": attending / total_heads},
                                   params={"layer": "all", "component": "attention", "tensor": "probs"},
                                   info={"entropy_threshold": p["entropy_threshold"],
                                         "max_weight_threshold": p["max_weight_threshold"],
                                         **({"attention_unavailable": rep.attention_unavailable,
                                             "warnings": [f"attention metrics unavailable: {reasons}"]}
                                            if reasons else {})}))
        return recs

    # ---- input suite ------------------------------------------------------------------------------------
    def _limit(self, bundle, p) -> int:
        lim = bundle.facts.max_seq_len
        return min(lim, p["max_len"]) if p["max_len"] else lim

    def _inputs(self, bundle, p, ctx):
        limit = self._limit(bundle, p)
        lengths = p["lengths"] or suite_mod.default_lengths(limit)
        too_long = [n for n in lengths if n > limit]
        lengths = [n for n in lengths if n <= limit]
        if not lengths:
            return ctx.skip(f"every suite length exceeds the limit {limit}")
        items = suite_mod.suite(bundle.tokenizer, bundle.facts.vocab, lengths, p["classes"], p["samples"], ctx.seed)
        recs = []
        for row in probes.class_losses(bundle.logits, items, ctx.device):
            cls, n = row.pop("input_class"), row.pop("seq_len")
            recs.append(ctx.record({k: float(v) for k, v in row.items()},
                                   params={"input_class": cls, "input_len": n},
                                   info={"lengths_dropped": too_long} if too_long else None))
        return recs

    def _sequences(self, bundle, p, ctx, tag: int) -> list[list[int]]:
        return [suite_mod.make_input(p["input_class"], p["seq_len"], bundle.tokenizer, bundle.facts.vocab,
                                     seed=ctx.seed * 10007 + tag * 977 + s).tokens for s in range(p["samples"])]

    def _sensitivity(self, bundle, p, ctx):
        space = suite_mod.token_space(bundle.tokenizer, bundle.facts.vocab)
        seqs = self._sequences(bundle, p, ctx, 1)
        recs = []
        for frac in p["sensitivity_positions"]:
            pos = min(int(frac * p["seq_len"]), p["seq_len"] - 1)
            runs = [probes.sensitivity(bundle.logits, s, pos, space, ctx.device, ctx.seed + i)
                    for i, s in enumerate(seqs)]
            keys = ("kl_at_position_nats", "kl_mean_nats", "kl_max_nats", "kl_last_nats", "kl_before_max_nats",
                    "reach_tokens")
            metrics = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
            curve = [sum(vals) / len(vals) for vals in zip(*[r["kl_curve"] for r in runs], strict=True)]
            warn = ["a later token changed the prediction at an earlier position (causality leak)"] if (
                metrics["kl_before_max_nats"] > 1e-6) else None
            recs.append(ctx.record(metrics, samples={"offset_tokens": runs[0]["offsets"], "kl_nats": curve},
                                   params={"position_frac": frac, "position": pos},
                                   info={"warnings": warn} if warn else None))
        return recs

    def _robustness(self, bundle, p, ctx):
        space = suite_mod.token_space(bundle.tokenizer, bundle.facts.vocab)
        seqs = self._sequences(bundle, p, ctx, 2)
        recs = []
        for kind in p["noise"]:
            for rate in p["noise_rates"]:
                r = probes.robustness(bundle.logits, seqs, kind, rate, space, ctx.device, ctx.seed)
                recs.append(ctx.record({k: float(v) for k, v in r.items() if k not in ("noise", "rate")},
                                       params={"noise_kind": kind, "noise_rate": rate}))
        return recs

    def _ambiguity(self, bundle, p, ctx):
        rows = probes.ambiguity(bundle.logits, suite_mod.ambiguity_pairs(bundle.tokenizer), ctx.device,
                                max_len=bundle.facts.max_seq_len)
        recs = [ctx.record({k: float(v) for k, v in r.items() if k != "pair"}, params={"pair": r["pair"]})
                for r in rows]
        if rows:
            keys = [k for k in rows[0] if k != "pair"]
            recs.append(ctx.record({k: sum(r[k] for r in rows) / len(rows) for k in keys}, params={"pair": "all"}))
        return recs
