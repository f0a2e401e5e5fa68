"""Charts of the `attention` scenario: latency, memory and TFLOP/s vs sequence length, sparsity vs speedup.

One line per implementation (and per pattern, pass, causal, dtype... where those vary in the run).
The accuracy table needs no chart: the generic table layer shows max_abs_err / max_rel_err columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from andromeda.records import Record
from andromeda.report.chart_specs import AXIS_LABELS, _has, _mark_oom, _ok, _xy
from andromeda.report.charts import register
from andromeda.report.format import fmt_value

SCENARIO = "attention"
SERIES = ["params.impl", "params.pattern", "params.pass", "params.causal", "params.dtype", "params.alibi",
          "params.kv_heads", "params.head_dim", "params.heads", "params.batch", "source"]
BY_VALUE = {"params.impl", "params.pattern", "params.pass", "params.dtype", "source"}
# What a sparse record and its dense baseline must share (everything but the pattern and its knobs).
SHAPE = ["source", "params.impl", "params.seq_len", "params.pass", "params.causal", "params.dtype", "params.alibi",
         "params.batch", "params.heads", "params.kv_heads", "params.head_dim"]


def _series(df: pd.DataFrame) -> list[str]:
    """The series keys that vary among the records (impl always): a constant one would only clutter labels."""
    keys = []
    for k in SERIES:
        if k not in df.columns:
            continue
        if k == "params.impl" or df[k].map(fmt_value).nunique() > 1:
            keys.append(k)
    return keys


def _groups(df: pd.DataFrame, keys: Sequence[str]):
    """(label, sub-frame) per distinct combination of keys, in order of appearance. Labels are terse:
    implementation, pattern and pass by value ('flex · sliding_window · fwd_bwd'), the rest as name=value."""
    keys = [k for k in keys if k in df.columns]
    if not keys:
        yield "", df
        return
    text = df[keys].map(fmt_value)  # (rows, keys) of str
    for combo in dict.fromkeys(text.itertuples(index=False, name=None)):
        mask = (text == pd.Series(combo, index=keys)).all(axis=1)
        parts = [v if k in BY_VALUE else f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo, strict=True)]
        yield " · ".join(parts), df[mask.to_numpy()]


FAMILY = ["params.alibi", "params.kv_heads"]  # variants of one attention problem a run may add (ALiBi, GQA)


def _family_key(df: pd.DataFrame) -> pd.Series:
    keys = [k for k in FAMILY if k in df.columns]
    if not keys:
        return pd.Series("", index=df.index)
    return df[keys].apply(lambda r: tuple(fmt_value(v) for v in r), axis=1)


def main_family(df: pd.DataFrame) -> pd.DataFrame:
    """The records of the run's main problem: the most common (alibi, kv_heads) among ok records. ALiBi and
    GQA variants go to their own chart, so that no chart carries every line of a large run."""
    ok = _ok(df)
    if ok.empty:
        return df.iloc[0:0]
    key = _family_key(df)
    return df[key == _family_key(ok).value_counts().index[0]]


def _per_pass(df: pd.DataFrame, pass_: str | None) -> pd.DataFrame:
    """The main family's records of one pass; pass_ None = forward, or every pass when the run has one."""
    fam = main_family(df)
    if "params.pass" not in fam.columns:
        return fam if pass_ is None else fam.iloc[0:0]
    passes = set(fam["params.pass"].dropna())
    if pass_ is None:
        return fam if len(passes) <= 1 else fam[fam["params.pass"] == "forward"]
    return fam[fam["params.pass"] == pass_] if len(passes) > 1 else fam.iloc[0:0]


def _per_seq_len(ax: Axes, df: pd.DataFrame, metric: str) -> list[pd.DataFrame]:
    """One line per series of `metric` vs seq_len; returns the plotted points."""
    ok = _ok(df)
    drawn = []
    for label, g in _groups(ok, _series(ok)):
        pts = _xy(g, "params.seq_len", metric)
        if pts.empty:
            continue
        ax.plot(pts["x"], pts["y"], markersize=4, label=label, **_style(g.iloc[0]))
        drawn.append(pts)
    return drawn


IMPL_ORDER = ["eager", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flex", "triton", "flash_attn",
              "xformers"]
LINESTYLE = {"dense": "-", "sliding_window": "--", "bigbird": "-.", "dilated": ":", "block_sparse": (0, (5, 1, 1, 1))}


def _style(row: pd.Series) -> dict:
    """Colour by implementation, line style by pattern, marker by pass: one glance tells them apart."""
    impl = row.get("params.impl")
    style = {"linestyle": LINESTYLE.get(row.get("params.pattern"), "-"),
             "marker": "s" if row.get("params.pass") == "fwd_bwd" else "o"}
    if impl in IMPL_ORDER:
        style["color"] = f"C{IMPL_ORDER.index(impl)}"
    return style


def _latency(ax: Axes, df: pd.DataFrame) -> bool:
    if not _has(df, "params.seq_len", "metrics.latency_ms"):
        return False
    drawn = _per_seq_len(ax, df, "metrics.latency_ms")
    if not drawn:
        return False
    pts = pd.concat(drawn)
    x0, x1 = float(pts["x"].min()), float(pts["x"].max())
    if x1 > x0:  # guides through the geometric mean latency at the shortest length
        y0 = float(np.exp(np.log(pts.loc[pts["x"] == x0, "y"].clip(lower=1e-9)).mean()))
        x = np.geomspace(x0, x1, 50)
        ax.plot(x, y0 * (x / x0) ** 2, color="0.45", linestyle="--", linewidth=1, label="O(N²) guide")
        ax.plot(x, y0 * (x / x0), color="0.45", linestyle=":", linewidth=1, label="O(N·k) guide")
    _mark_oom(ax, df, "params.seq_len")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABELS["seq_len"])
    ax.set_ylabel("latency, median (ms)")
    return True


def _memory(ax: Axes, df: pd.DataFrame) -> bool:
    if not _has(df, "params.seq_len", "metrics.peak_mib") or not _per_seq_len(ax, df, "metrics.peak_mib"):
        return False
    _mark_oom(ax, df, "params.seq_len")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABELS["seq_len"])
    on_gpu = df.get("info.device", pd.Series(dtype=object)).astype(str).str.startswith("cuda").any()
    ax.set_ylabel("peak allocated GPU memory (MiB)" if on_gpu else "peak memory, process RSS (MiB)")
    return True


def _tflops(ax: Axes, df: pd.DataFrame) -> bool:
    if not _has(df, "params.seq_len", "metrics.tflops") or not _per_seq_len(ax, df, "metrics.tflops"):
        return False
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(AXIS_LABELS["seq_len"])
    ax.set_ylabel("achieved TFLOP/s (pairs the pattern keeps)")
    return True


# One chart per pass (forward; forward+backward when the run has both), of the run's main problem.
@register(SCENARIO, "latency_vs_seq_len", "Attention latency vs sequence length (forward)", key=True)
def latency_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _latency(ax, _per_pass(df, None))


@register(SCENARIO, "latency_vs_seq_len_fwd_bwd", "Attention latency vs sequence length (forward+backward)")
def latency_vs_seq_len_fwd_bwd(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _latency(ax, _per_pass(df, "fwd_bwd"))


@register(SCENARIO, "memory_vs_seq_len", "Attention peak memory vs sequence length (forward)")
def memory_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _memory(ax, _per_pass(df, None))


@register(SCENARIO, "memory_vs_seq_len_fwd_bwd", "Attention peak memory vs sequence length (forward+backward)")
def memory_vs_seq_len_fwd_bwd(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _memory(ax, _per_pass(df, "fwd_bwd"))


@register(SCENARIO, "tflops_vs_seq_len", "Attention TFLOP/s vs sequence length (forward)")
def tflops_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _tflops(ax, _per_pass(df, None))


@register(SCENARIO, "tflops_vs_seq_len_fwd_bwd", "Attention TFLOP/s vs sequence length (forward+backward)")
def tflops_vs_seq_len_fwd_bwd(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    return _tflops(ax, _per_pass(df, "fwd_bwd"))


@register(SCENARIO, "tflops_variants_vs_seq_len", "Attention TFLOP/s vs sequence length: ALiBi and GQA variants")
def tflops_variants_vs_seq_len(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    main = main_family(df)
    return _tflops(ax, df.drop(index=main.index))


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Sparse ok records with their dense baseline (same impl and shape): sparsity, speedup, labels."""
    need = ["params.pattern", "metrics.latency_ms", "metrics.sparsity"]
    if not _has(df, *need):
        return pd.DataFrame()
    ok = _ok(df)
    if ok.empty or not (ok["params.pattern"] != "dense").any():
        return pd.DataFrame()
    keys = [k for k in SHAPE if k in ok.columns]
    key = ok[keys].apply(lambda r: tuple(fmt_value(v) for v in r), axis=1) if keys else pd.Series("", index=ok.index)
    dense = ok[ok["params.pattern"] == "dense"]
    base = dense.groupby(key[dense.index])["metrics.latency_ms"].median().to_dict()
    rows = []
    for i, r in ok[ok["params.pattern"] != "dense"].iterrows():
        b = base.get(key[i])
        if b is None or not r["metrics.latency_ms"] > 0:
            continue
        rows.append({**r.to_dict(), "speedup": b / r["metrics.latency_ms"]})
    return pd.DataFrame(rows)


@register(SCENARIO, "sparsity_vs_speedup", "Speedup over dense vs sparsity", key=True)
def sparsity_vs_speedup(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    sp = speedups(df)
    if sp.empty:
        return False
    keys = [k for k in _series(sp) if k != "params.seq_len"]
    if "params.pattern" not in keys:
        keys.insert(1, "params.pattern")
    for label, g in _groups(sp, keys):
        g = g.sort_values("params.seq_len")
        ax.plot(g["metrics.sparsity"], g["speedup"], markersize=4, label=label, **_style(g.iloc[0]))
        last = g.iloc[-1]
        ax.annotate(f"N={fmt_value(last['params.seq_len'])}", (last["metrics.sparsity"], last["speedup"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    s = np.linspace(0, min(0.99, float(sp["metrics.sparsity"].max())), 50)
    ax.plot(s, 1 / (1 - s), color="0.45", linestyle=":", linewidth=1, label="ideal: time ∝ pairs kept")
    ax.axhline(1.0, color="0.3", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlim(left=min(0.0, float(sp["metrics.sparsity"].min())))
    ax.set_xlabel("sparsity (fraction of the dense pattern's pairs removed)")
    ax.set_ylabel("speedup over dense (× latency)")
    return True
