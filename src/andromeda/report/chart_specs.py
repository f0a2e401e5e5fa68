"""The built-in charts, one or two per scenario. Each returns False when its data is absent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from andromeda.records import Record
from andromeda.report.charts import register
from andromeda.report.format import fmt_number, fmt_value, metric_header

AXIS_LABELS = {
    "seq_len": "sequence length (tokens)",
    "batch": "batch size (sequences)",
    "prompt_len": "prompt length (tokens)",
}
_SHORT = {"params.batch": "b", "params.seq_len": "n", "params.prompt_len": "prompt", "params.mode": ""}


def _has(df: pd.DataFrame, *cols: str) -> bool:
    return all(c in df.columns for c in cols)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _label(keys: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for k, v in zip(keys, values, strict=True):
        short = _SHORT.get(k, k.split(".")[-1])
        parts.append(f"{short}={fmt_value(v)}" if short and k != "source" else fmt_value(v))
    return " · ".join(parts)


def _groups(df: pd.DataFrame, keys: Sequence[str]):
    """(label, sub-frame) per distinct combination of the present keys, in order of appearance."""
    keys = [k for k in keys if k in df.columns]
    if not keys:
        yield "", df
        return
    combos = list(dict.fromkeys(tuple(fmt_value(v) for v in row) for row in df[keys].itertuples(index=False)))
    for combo in combos:
        mask = np.ones(len(df), dtype=bool)
        for k, v in zip(keys, combo, strict=True):
            mask &= df[k].map(fmt_value).to_numpy() == v
        yield _label(keys, combo), df[mask]


def _xy(g: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    out = pd.DataFrame({"x": pd.to_numeric(g[x], errors="coerce"), "y": g[y]}, index=g.index)
    return out.dropna().sort_values("x")


def _mark_oom(ax: Axes, df: pd.DataFrame, x: str) -> None:
    """Red crosses along the bottom edge at the x of every OOM record."""
    if x not in df.columns:
        return
    xs = pd.to_numeric(df.loc[df["status"] == "oom", x], errors="coerce").dropna()
    if len(xs):
        ax.plot(
            xs,
            [0.04] * len(xs),
            "x",
            color="crimson",
            markersize=9,
            mew=2,
            linestyle="none",
            transform=ax.get_xaxis_transform(),
            label="OOM",
            clip_on=False,
        )


@register("latency", "vs_seq_len", "Latency vs sequence length", key=True)
def latency_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if not _has(df, "params.seq_len", "metrics.latency_ms"):
        return False
    ci = _has(df, "metrics.latency_ms_ci_low", "metrics.latency_ms_ci_high")
    drawn = False
    for label, g in _groups(_ok(df), ["source", "params.mode", "params.batch"]):
        pts = _xy(g, "params.seq_len", "metrics.latency_ms")
        if pts.empty:
            continue
        yerr = None
        if ci:
            lo = (pts["y"] - g.loc[pts.index, "metrics.latency_ms_ci_low"]).clip(lower=0).fillna(0)
            hi = (g.loc[pts.index, "metrics.latency_ms_ci_high"] - pts["y"]).clip(lower=0).fillna(0)
            yerr = np.vstack([lo.to_numpy(), hi.to_numpy()])
        ax.errorbar(pts["x"], pts["y"], yerr=yerr, marker="o", markersize=4, capsize=3, label=label)
        drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(AXIS_LABELS["seq_len"])
        ax.set_ylabel("latency, median (ms)" + (" ± CI" if ci else ""))
    return drawn


@register("throughput", "vs_batch", "Throughput vs batch size", key=True)
def throughput_vs_batch(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if not _has(df, "params.batch", "metrics.tokens_per_s"):
        return False
    drawn = False
    for label, g in _groups(_ok(df), ["source", "params.mode", "params.seq_len"]):
        pts = _xy(g, "params.batch", "metrics.tokens_per_s")
        if not pts.empty:
            ax.plot(pts["x"], pts["y"], marker="o", markersize=4, label=label)
            drawn = True
    if drawn:
        _mark_oom(ax, df, "params.batch")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(AXIS_LABELS["batch"])
        ax.set_ylabel("throughput (tokens/s)")
    return drawn


@register("generation", "decode_by_position", "Decode step latency vs position", key=True)
def decode_by_position(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = False
    for r in recs:
        steps = r.samples.get("decode_step_ms")
        if r.status != "ok" or not steps:
            continue
        start = r.params.get("prompt_len", 0) or 0
        cache = r.params.get("use_cache")
        x = np.arange(len(steps)) + start
        y = np.array([np.nan if v is None else v for v in steps], dtype=float)
        parts = [r.source, f"prompt={r.params.get('prompt_len', '?')}", f"b={r.params.get('batch', '?')}"]
        if cache is not None:
            parts.append("cache on" if cache else "cache off")
        ax.plot(x, y, linestyle="-" if cache is not False else "--", linewidth=1.4, label=" · ".join(parts))
        drawn = True
    if drawn:
        ax.set_xlabel("sequence position of the generated token (tokens)")
        ax.set_ylabel("decode step latency (ms)")
        ax.set_ylim(bottom=0)
    return drawn


@register("generation", "cache", "Time per output token, with vs without KV cache")
def generation_cache(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if not _has(df, "params.use_cache", "metrics.tpot_ms"):
        return False
    ok = _ok(df)
    groups = list(_groups(ok, ["source", "params.prompt_len", "params.gen_len", "params.batch"]))
    drawn = False
    width = 0.38
    for j, cache in enumerate((True, False)):
        xs, ys = [], []
        for i, (_, g) in enumerate(groups):
            vals = g.loc[g["params.use_cache"] == cache, "metrics.tpot_ms"].dropna()
            if len(vals):
                xs.append(i + (j - 0.5) * width)
                ys.append(float(vals.median()))
        if xs:
            bars = ax.bar(
                xs,
                ys,
                width=width,
                label="KV cache on" if cache else "KV cache off",
                color="tab:blue" if cache else "tab:orange",
            )
            ax.bar_label(bars, labels=[fmt_number(v, 3) for v in ys], fontsize=7)
            drawn = True
    if drawn:
        ax.set_xticks(range(len(groups)), [label.replace(" · ", "\n") for label, _ in groups], fontsize=7)
        ax.set_ylabel(metric_header("tpot_ms"))
        ax.set_xlim(-1, len(groups))
        ax.margins(y=0.15)
    return drawn


@register("memory", "vs_seq_len", "Peak memory vs sequence length", key=True)
def memory_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    metric = next(
        (
            m
            for m in ("metrics.peak_allocated_mib", "metrics.rss_peak_mib", "metrics.peak_mib")
            if m in df.columns and df[m].notna().any()
        ),
        None,
    )
    if metric is None or "params.seq_len" not in df.columns:
        return False
    drawn = False
    for label, g in _groups(_ok(df), ["source", "params.mode", "params.batch"]):
        pts = _xy(g, "params.seq_len", metric)
        if not pts.empty:
            ax.plot(pts["x"], pts["y"], marker="o", markersize=4, label=label)
            drawn = True
        kv = _xy(g, "params.seq_len", "metrics.kv_cache_mib") if "metrics.kv_cache_mib" in g else None
        if kv is not None and not kv.empty and kv["y"].gt(0).any():
            ax.plot(kv["x"], kv["y"], linestyle=":", marker=".", label=f"{label} · KV cache")
    if drawn:
        _mark_oom(ax, df, "params.seq_len")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(AXIS_LABELS["seq_len"])
        what = {"metrics.peak_allocated_mib": "peak allocated GPU memory", "metrics.rss_peak_mib": "peak RSS"}
        what = what.get(metric, "peak memory")
        ax.set_ylabel(f"{what} (MiB)")
    return drawn


def _scaling(axis: str):
    def draw(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
        col = f"params.{axis}"
        if not _has(df, "params.axis", col, "metrics.latency_ms"):
            return False
        on_axis = df[df["params.axis"] == axis]
        is_fit = pd.Series(False, index=on_axis.index)
        if "params.fit" in on_axis:
            is_fit = on_axis["params.fit"].map(lambda v: v is True).astype(bool)
        points, fits = on_axis[~is_fit], on_axis[is_fit & (on_axis["status"] == "ok")]
        drawn = False
        for source, g in _groups(_ok(points), ["source"]):
            pts = _xy(g, col, "metrics.latency_ms")
            if pts.empty:
                continue
            line = ax.plot(pts["x"], pts["y"], "o", markersize=5, label=f"{source} · measured")[0]
            drawn = True
            fit = fits[fits["source"] == source]
            if fit.empty or not _has(fit, "metrics.fit_a_ms", "metrics.fit_b_ms_per_token"):
                continue
            f = fit.iloc[0]
            a, b = f["metrics.fit_a_ms"], f["metrics.fit_b_ms_per_token"]
            c = f.get("metrics.fit_c_ms_per_token2", 0.0)
            c = 0.0 if pd.isna(c) else c
            n = np.geomspace(pts["x"].min(), pts["x"].max(), 100)
            extra = [f"R²={fmt_number(f.get('metrics.r2'), 3)}"]
            if pd.notna(f.get("metrics.quadratic_share", np.nan)):
                extra.append(f"quadratic share={fmt_number(f['metrics.quadratic_share'], 2)}")
            ax.plot(
                n,
                a + b * n + c * n**2,
                "-",
                color=line.get_color(),
                label=f"{source} · fit a+bN+cN² ({', '.join(extra)})",
            )
            # oom_boundary, or the bisection's bracket: largest size that ran .. smallest that did not
            boundary = f.get("metrics.oom_boundary", np.nan)
            if pd.isna(boundary):
                boundary = f.get("metrics.oom_boundary_fail", np.nan)
            if pd.notna(boundary):
                ax.axvline(
                    boundary,
                    color="crimson",
                    linestyle="--",
                    linewidth=1,
                    label=f"{source} · OOM boundary N={fmt_number(boundary)}",
                )
        if drawn:
            _mark_oom(ax, points, col)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"N = {AXIS_LABELS.get(axis, axis)}")
            ax.set_ylabel("latency, median (ms)")
        return drawn

    return draw


register("scaling", "seq_len", "Latency scaling with sequence length", key=True)(_scaling("seq_len"))
register("scaling", "batch", "Latency scaling with batch size")(_scaling("batch"))
