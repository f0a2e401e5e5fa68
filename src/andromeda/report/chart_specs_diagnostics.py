"""Charts of the diagnostics scenario: attention heatmaps, entropy and weight histograms per head,
activation / gradient statistics per layer, parameter shares, and the input-suite probes.

Image charts (heatmaps) show the first model source of the run; line charts show every source.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, PowerNorm

from andromeda.records import Record
from andromeda.report.charts import register
from andromeda.report.format import fmt_value

SCENARIO = "diagnostics"
SITE_ORDER = ("embed", "block", "attn", "ff_in", "ff_hidden", "ff_out")


def _ok(recs: Sequence[Record], probe: str, **params) -> list[Record]:
    return [r for r in recs if r.status == "ok" and r.params.get("probe") == probe
            and all(r.params.get(k) == v for k, v in params.items())]


def _first_source(recs: list[Record]) -> list[Record]:
    if not recs:
        return recs
    src = recs[0].source
    return [r for r in recs if r.source == src]


def _probs(recs: Sequence[Record]) -> list[Record]:
    """Attention-probability records of decoder layers."""
    rs = _ok(recs, "attention", component="attention", tensor="probs")
    return [r for r in rs if isinstance(r.params.get("layer"), int)]


def _attn_layers(recs: Sequence[Record]) -> list[Record]:
    return sorted(_first_source(_probs(recs)), key=lambda r: r.params["layer"])


def _short(source: str, n: int = 28) -> str:
    return source if len(source) <= n else source[: n - 1] + "…"


def _label(source: str, many: bool, text: str) -> str:
    return f"{_short(source)} · {text}" if many else text


def _image(ax: Axes) -> None:
    """Keep the grid the report style adds under an image."""
    ax.set_axisbelow(True)
    for im in ax.images:
        im.set_zorder(1)


def _per_layer_lines(ax: Axes, recs: list[Record], group_key: str, metric: str, order: Sequence[str] = ()) -> bool:
    """One line per params[group_key] of metric vs layer (integer layers only), for the first source."""
    recs = _first_source(recs)
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in recs:
        layer, v = r.params.get("layer"), r.metrics.get(metric)
        if isinstance(layer, int) and isinstance(v, (int, float)) and np.isfinite(v):
            lines.setdefault((r.source, str(r.params.get(group_key))), []).append((layer, float(v)))
    rank = {k: i for i, k in enumerate(order)}
    drawn = False
    for (_, key), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], 99), kv[0][1])):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key)
        drawn = True
    if drawn:
        ax.set_xlabel(f"layer · {_short(recs[0].source, 60)}")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return drawn


# ---- attention --------------------------------------------------------------------------------------
@register(SCENARIO, "attention_heatmaps", "Attention weights per layer (rows) and head (columns)")
def attention_heatmaps(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    layers = [r for r in _attn_layers(recs) if r.samples.get("heatmap") and r.info.get("heatmap_shape")]
    if not layers:
        return False
    h, n_q, n_k = layers[0].info["heatmap_shape"]
    gap = 1
    mosaic = np.full((len(layers) * (n_q + gap) - gap, h * (n_k + gap) - gap), np.nan)
    for i, r in enumerate(layers):
        hh, nq, nk = r.info["heatmap_shape"]
        a = np.asarray(r.samples["heatmap"], dtype=float).reshape(hh, nq, nk)
        r0, rows = i * (n_q + gap), min(nq, n_q)
        for j in range(min(hh, h)):
            c0, cols = j * (n_k + gap), min(nk, n_k)
            mosaic[r0 : r0 + rows, c0 : c0 + cols] = a[j, :rows, :cols]
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap="viridis", norm=PowerNorm(0.4, vmin=0, vmax=1),
                   interpolation="nearest", aspect="auto")
    ax.figure.colorbar(im, ax=ax, label="attention weight (power scale)")
    heads = layers[0].info.get("heads", list(range(h)))
    ax.set_xticks([j * (n_k + gap) + n_k / 2 for j in range(h)], [f"h{x}" for x in heads[:h]], fontsize=7)
    ax.set_yticks([i * (n_q + gap) + n_q / 2 for i in range(len(layers))],
                  [f"L{r.params['layer']}" for r in layers], fontsize=7)
    ax.set_xlabel(f"key position 0..{n_k - 1} per head · {_short(layers[0].source, 60)}")
    ax.set_ylabel(f"query position 0..{n_q - 1} per layer")
    _image(ax)
    return True


def _layer_head_matrix(layers: list[Record], key: str) -> np.ndarray:
    width = max(len(r.samples.get(key) or []) for r in layers)
    m = np.full((len(layers), width), np.nan)
    for i, r in enumerate(layers):
        vals = [np.nan if v is None else v for v in (r.samples.get(key) or [])]
        m[i, : len(vals)] = vals
    return m


@register(SCENARIO, "entropy", "Normalized attention entropy, layer x head", key=True)
def entropy_heatmap(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    layers = [r for r in _attn_layers(recs) if r.samples.get("entropy_norm_mean")]
    if not layers:
        return False
    m = _layer_head_matrix(layers, "entropy_norm_mean")
    im = ax.imshow(np.ma.masked_invalid(m), cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, label="mean H_i / ln(n_i)")
    conc = _layer_head_matrix(layers, "concentrated")
    if m.size <= 256:
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                mark = "*" if conc[i, j] == 1 else ""
                ax.text(j, i, f"{v:.2f}{mark}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
    heads = layers[0].info.get("heads", list(range(m.shape[1])))
    ax.set_xticks(range(m.shape[1]), [str(h) for h in heads[: m.shape[1]]], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(r.params["layer"]) for r in layers], fontsize=7)
    ax.set_xlabel(f"head (* = paying attention) · {_short(layers[0].source, 60)}")
    ax.set_ylabel("layer")
    _image(ax)
    return True


@register(SCENARIO, "weight_histograms", "Attention-weight distribution per head")
def weight_histograms(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    layers = [r for r in _attn_layers(recs) if r.samples.get("hist_counts") and r.info.get("hist_shape")]
    if not layers:
        return False
    rows, labels = [], []
    edges = layers[0].info["hist_edges"]
    for r in layers:
        h, b = r.info["hist_shape"]
        counts = np.asarray(r.samples["hist_counts"], dtype=float).reshape(h, b)
        for j, head in enumerate(r.info.get("heads", range(h))):
            total = counts[j].sum()
            rows.append(counts[j] / total if total else counts[j])
            labels.append(f"L{r.params['layer']} h{head}")
    m = np.vstack(rows)
    im = ax.imshow(np.ma.masked_less_equal(m, 0), cmap="Blues", norm=LogNorm(vmin=max(m[m > 0].min(), 1e-6), vmax=1),
                   aspect="auto", interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, label="fraction of weights in bin")
    ticks = [i for i, e in enumerate(edges[:-1]) if e > 0 and abs(np.log10(e) - round(np.log10(e))) < 1e-9]
    ax.set_xticks([t - 0.5 for t in ticks], [f"1e{round(np.log10(edges[t]))}" for t in ticks], fontsize=7)
    step = max(1, len(labels) // 24)
    ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
    ax.set_xlabel(f"attention weight (bin lower edge; first bin [0, 1e-6)) · {_short(layers[0].source, 40)}")
    _image(ax)
    return True


@register(SCENARIO, "attention_span", "Mean attention span per layer (mean over heads)")
def attention_span(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = _per_layer_lines(ax, _probs(recs), "component", "span_tokens")
    if drawn:
        ax.set_ylabel("E|i - j| under the attention (tokens)")
        ax.set_ylim(bottom=0)
    return drawn


# ---- activations and gradients -------------------------------------------------------------------------
@register(SCENARIO, "activation_rms", "Activation RMS per layer and site")
def activation_rms(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = _per_layer_lines(ax, _ok(recs, "activations", tensor="activation"), "component", "rms", SITE_ORDER)
    if drawn:
        ax.set_yscale("log")
        ax.set_ylabel("RMS of the activation")
    return drawn


@register(SCENARIO, "activation_kurtosis", "Activation kurtosis per layer and site (Gaussian = 3)")
def activation_kurtosis(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = _per_layer_lines(ax, _ok(recs, "activations", tensor="activation"), "component", "kurtosis", SITE_ORDER)
    if drawn:
        ax.set_yscale("log")
        ax.axhline(3.0, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel("kurtosis m4 / m2²")
    return drawn


@register(SCENARIO, "activation_grad_rms", "Gradient RMS at each site per layer")
def activation_grad_rms(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = _per_layer_lines(ax, _ok(recs, "activations", tensor="gradient"), "component", "rms", SITE_ORDER)
    if drawn:
        ax.set_yscale("log")
        ax.set_ylabel("RMS of dL/d(activation)")
    return drawn


@register(SCENARIO, "param_grad_norm", "Parameter-gradient norm per layer and component", key=True)
def param_grad_norm(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = _ok(recs, "gradients", tensor="param_grad")
    drawn = _per_layer_lines(ax, rs, "component", "grad_norm", ("all",))
    if not drawn:
        return False
    flagged = [r for r in rs if r.params.get("component") == "all" and isinstance(r.params.get("layer"), int)
               and (r.metrics.get("vanishing") or r.metrics.get("exploding"))]
    for r in flagged:
        kind = "exploding" if r.metrics.get("exploding") else "vanishing"
        ax.plot([r.params["layer"]], [max(r.metrics.get("grad_norm", 0.0), 1e-30)], "x", color="crimson",
                markersize=10, mew=2, label=f"flagged {kind}")
    ax.set_yscale("log")
    ax.set_ylabel("||dL/dW||₂")
    return True


@register(SCENARIO, "update_ratio", "Update / weight ratio after one optimizer step")
def update_ratio(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = _per_layer_lines(ax, _ok(recs, "gradients", tensor="param_grad"), "component", "update_ratio", ("all",))
    if drawn:
        ax.set_yscale("log")
        ax.set_ylabel("||ΔW||₂ / ||W||₂")
    return drawn


@register(SCENARIO, "attention_grads", "Gradient norms through the attention per layer")
def attention_grads(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = _ok(recs, "attention", tensor="gradient")
    drawn = _per_layer_lines(ax, rs, "component", "l2_norm", ("attn.q", "attn.k", "attn.v", "attn.scores"))
    if drawn:
        ax.set_yscale("log")
        ax.set_ylabel("||dL/dX||₂ (q, k, v after QK-norm and rotary; scores)")
    return drawn


@register(SCENARIO, "param_share", "Parameter share per component")
def param_share(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = [r for r in _first_source(_ok(recs, "params", layer="all")) if r.params.get("component") != "all"]
    if not rs:
        return False
    rs.sort(key=lambda r: r.metrics.get("share_pct", 0.0))
    names = [str(r.params["component"]) for r in rs]
    vals = [r.metrics.get("share_pct", 0.0) for r in rs]
    bars = ax.barh(names, vals, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in vals], fontsize=7)
    ax.set_xlabel(f"share of parameters (%) · {_short(rs[0].source, 60)}")
    ax.margins(x=0.15)
    return True


# ---- input suite -------------------------------------------------------------------------------------
@register(SCENARIO, "loss_by_class", "Loss per input class vs input length", key=True)
def loss_by_class(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = _ok(recs, "inputs")
    many = len({r.source for r in rs}) > 1
    lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rs:
        key = (r.source, r.params.get("input_class"))
        lines.setdefault(key, []).append((r.params["input_len"], r.metrics["loss_nats"]))
    for (src, cls), pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=_label(src, many, cls))
    if lines:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel("loss (nats/token)")
    return bool(lines)


@register(SCENARIO, "robustness", "Loss vs noise rate")
def robustness(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = _ok(recs, "robustness")
    many = len({r.source for r in rs}) > 1
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rs:
        key = (r.source, r.params.get("noise_kind"))
        lines.setdefault(key, []).append((r.params["noise_rate"], r.metrics["loss_nats"]))
    for (src, kind), pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=_label(src, many, kind))
    if lines:
        ax.set_xlabel("noise rate (edits per token)")
        ax.set_ylabel("loss of the noisy sequence (nats/token)")
    return bool(lines)


@register(SCENARIO, "sensitivity", "KL divergence after a one-token change")
def sensitivity(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = _ok(recs, "sensitivity")
    many = len({r.source for r in rs}) > 1
    drawn = False
    for r in rs:
        x, y = r.samples.get("offset_tokens"), r.samples.get("kl_nats")
        if not x or not y:
            continue
        y = np.clip(np.asarray([np.nan if v is None else v for v in y], dtype=float), 1e-12, None)
        text = f"changed token {fmt_value(r.params.get('position'))}"
        ax.plot(x, y, linewidth=1.2, label=_label(r.source, many, text))
        drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("positions after the changed token")
        ax.set_ylabel("KL(P_orig || P_changed) (nats)")
    return drawn


@register(SCENARIO, "ambiguity", "Same span after two contexts: KL between predictions")
def ambiguity(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    rs = [r for r in _ok(recs, "ambiguity") if r.params.get("pair") != "all"]
    if not rs:
        return False
    sources = list(dict.fromkeys(r.source for r in rs))
    pairs = list(dict.fromkeys(r.params["pair"] for r in rs))
    width = 0.8 / len(sources)
    for k, src in enumerate(sources):
        vals = {r.params["pair"]: r.metrics.get("kl_mean_nats", np.nan) for r in rs if r.source == src}
        xs = [i + (k - (len(sources) - 1) / 2) * width for i in range(len(pairs))]
        ax.bar(xs, [vals.get(p, np.nan) for p in pairs], width=width, label=_short(src) if len(sources) > 1 else None)
    ax.set_xticks(range(len(pairs)), pairs, fontsize=7)
    ax.set_ylabel("mean KL over the span (nats)")
    return True
