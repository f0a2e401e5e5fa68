"""Charts of the training step's speed: MFU per configuration (the speed options a training record carries in its
params: precision, compile, fused_ce, fused AdamW, optimizer, checkpointing), and the label that names a training
run in every training chart. Imported by charts._load_chart_specs; no torch.

mfu_by_config  one group of horizontal bars per model and sequence length (the first model on top), one bar per
               configuration in the order the manifest lists them, each labelled with its MFU (datasheet peak) and
               its ratio to the group's first configuration (the change); diamonds at MFU against the measured matmul
               rate, ticks at HFU where blocks are recomputed; OOM and error cases marked. Without a device peak (a
               CPU run) the bars are TFLOP/s instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from andromeda.records import Record
from andromeda.report.charts import register
from andromeda.report.format import fmt_number

# the training record params that are its step's speed options, with the value a record without one had
SETTINGS = {"precision": "fp32", "compile": "none", "compile_backend": "inductor", "fused_ce": False,
            "optimizer": "adamw", "fused_adamw": False, "checkpointing": "none", "activation_checkpointing": False}
# markers over the bars: (metric column, legend text); hollow diamonds at the measured-peak MFU, ticks at the HFU
_MARKS = (("metrics.mfu_measured_peak", "MFU vs measured matmul rate"), ("metrics.hfu", "HFU (recompute counted)"))
_MARKER = {"MFU vs measured matmul rate": "D", "HFU (recompute counted)": "|"}
_PRECISION = {"fp32": "fp32", "bf16": "bf16 autocast", "bf16-autocast": "bf16 autocast", "fp16": "fp16 autocast",
              "bf16-master": "bf16-master"}


def _get(params: dict[str, Any], key: str) -> Any:
    v = params.get(key, SETTINGS[key])
    return SETTINGS[key] if v is None or (isinstance(v, float) and np.isnan(v)) else v


def _options(params: dict[str, Any]) -> list[str]:
    """The step's speed options beyond precision, as keys of _LONG / _SHORT, in label order."""
    opts = ["compiled"] if _get(params, "compile") == "blocks" else []
    if _get(params, "fused_ce") is True:
        opts.append("fused-ce")
    if _get(params, "optimizer") == "adamw8bit":
        opts.append("8bit-adamw")
    elif _get(params, "fused_adamw") is True:
        opts.append("fused-adamw")
    ckpt = _get(params, "checkpointing")
    if ckpt == "none" and _get(params, "activation_checkpointing") is True:
        ckpt = "full"
    if ckpt != "none":
        opts.append(f"{ckpt}-ckpt")
    return opts


_LONG = {"fused-ce": "fused CE", "8bit-adamw": "8-bit AdamW", "fused-adamw": "fused AdamW"}
_SHORT = {"fused-ce": "fused-CE", "8bit-adamw": "8bit-AdamW", "fused-adamw": "fused-AdamW",
          "selective-ckpt": "sel-ckpt"}


def config_label(params: dict[str, Any]) -> str:
    """'bf16-master · compiled blocks · fused CE · fused AdamW': a training step's speed options in words."""
    prec = str(_get(params, "precision"))
    opts = _options(params)
    if opts[:1] == ["compiled"]:
        backend = _get(params, "compile_backend")
        words = ["compiled blocks" + ("" if backend == "inductor" else f" ({backend})")]
        opts = opts[1:]
    else:
        words = ["eager"]
    words += [_LONG.get(o, o.replace("-ckpt", " ckpt")) for o in opts]
    return " · ".join([_PRECISION.get(prec, prec), *words])


def short_config(params: dict[str, Any]) -> str:
    """'bf16-master+compiled+fused-CE+fused-AdamW': config_label's words, short, for legends that hold several."""
    prec = str(_get(params, "precision")).replace("-autocast", "")
    return "+".join([prec, *(_SHORT.get(o, o) for o in _options(params))])


def _params(row: pd.Series) -> dict[str, Any]:
    return {k[len("params."):]: v for k, v in row.items() if k.startswith("params.")}


def run_labels(df: pd.DataFrame) -> dict[str, str]:
    """case_id -> how the training charts name that run: its source, then whichever of learning rate, sequence
    length, batch, accumulation and configuration differ between the runs shown."""
    cases = df.drop_duplicates("case_id")
    keys = {"lr": "lr", "seq_len": "n", "batch": "b", "grad_accum": "accum"}
    described = {}
    for _, row in cases.iterrows():
        p = _params(row)
        d = {name: fmt_number(p.get(k), 3) for k, name in keys.items()}
        d["config"] = short_config(p)
        described[row["case_id"]] = (row["source"], d)
    varying = [k for k in [*keys.values(), "config"] if len({d[k] for _, d in described.values()}) > 1]
    return {cid: " · ".join([src] + [d[k] if k == "config" else f"{k}={d[k]}" for k in varying])
            for cid, (src, d) in described.items()}


def _is_final(df: pd.DataFrame) -> pd.Series:
    if "params.final" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["params.final"].map(lambda v: v is True).astype(bool)


@register("training", "mfu_by_config", "MFU per training configuration", key=True)
def mfu_by_config(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ok = df[(df["status"] == "ok") & _is_final(df)]
    metric = next((m for m in ("metrics.mfu", "metrics.tflops") if m in ok.columns and ok[m].notna().any()), None)
    if metric is None:
        return False
    failed = df[df["status"].isin(["oom", "error"])]
    rows = pd.concat([ok, failed])
    if "params.seq_len" not in rows.columns:
        rows = rows.assign(**{"params.seq_len": np.nan})
    rows = rows.assign(_config=[config_label(_params(r)) for _, r in rows.iterrows()],
                       _group=[f"{r['source']} · n={fmt_number(r['params.seq_len'])}" for _, r in rows.iterrows()])
    configs = list(dict.fromkeys(rows.sort_index()["_config"]))
    groups = list(dict.fromkeys(rows.sort_index()["_group"]))
    present = {g: [c for c in configs if ((rows["_group"] == g) & (rows["_config"] == c)).any()] for g in groups}
    height = 0.8 / max(len(v) for v in present.values())
    pct = metric == "metrics.mfu"
    scale = 100.0 if pct else 1.0
    marks: dict[str, list[tuple[float, float]]] = {}  # legend text -> (value, y): drawn after the bars
    top = 0.0
    for config in configs:
        ys, vals, texts = [], [], []
        for i, group in enumerate(groups):
            same = rows[(rows["_group"] == group) & (rows["_config"] == config)]
            if same.empty:
                continue
            r = same.iloc[-1]
            k, n = present[group].index(config), len(present[group])  # the group's bars centred on its tick
            y = i + (k - (n - 1) / 2) * height
            if r["status"] != "ok":
                ax.text(0, y, f" {r['status'].upper()}", ha="left", va="center", fontsize=7, color="crimson")
                continue
            v = float(r[metric]) * scale
            first = rows[(rows["_group"] == group) & (rows["status"] == "ok")].iloc[0]
            base = float(first[metric]) * scale
            ys.append(y)
            vals.append(v)
            text = f"{fmt_number(v, 3)}{'%' if pct else ''}"
            texts.append(text if first.name == r.name or not base else f"{text} ×{fmt_number(v / base, 3)}")
            for col, what in _MARKS:
                if pct and col in r.index and pd.notna(r[col]):
                    marks.setdefault(what, []).append((float(r[col]) * scale, y))
        if ys:
            bars = ax.barh(ys, vals, height=height, label=config)
            ax.bar_label(bars, labels=texts, fontsize=6, padding=2)
            top = max(top, *vals)
    for what, points in marks.items():
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, marker=_MARKER[what], s=60 if _MARKER[what] == "|" else 18, zorder=3, label=what,
                   facecolors="none" if _MARKER[what] == "D" else "black", edgecolors="black", linewidths=1.0)
        top = max(top, *xs)
    ax.set_yticks(range(len(groups)), groups, fontsize=7 if len(groups) <= 8 else 6)
    ax.set_ylim(len(groups) - 0.5, -0.5)  # the manifest's first model on top
    ax.set_xlim(0, top * 1.35 if top > 0 else 1.0)  # room for the labels right of the bars
    ax.set_xlabel(("MFU, datasheet peak (%)" if pct else "model TFLOP/s (no device peak known)")
                  + "; ×: vs the first bar of its group", fontsize=9)
    return True


__all__ = ["config_label", "short_config", "run_labels", "mfu_by_config", "SETTINGS"]
