"""Charts of the quality scenarios (training, perplexity, teacher_student) and the teacher/student
LaTeX table. Imported by charts._load_chart_specs; no torch.

training       loss vs step, validation perplexity vs step with the entropy floor, tokens/s vs step
perplexity     perplexity vs KV-cache quantization (with the logit error), KV bytes per token
teacher_student  perplexity, decode throughput and KV bytes per token, teacher beside student
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from andromeda.records import Record
from andromeda.report.charts import register
from andromeda.report.format import fmt_number, latex_escape, latex_number

CACHE_ORDER = ("off", "full", "int8", "int4")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _is_final(df: pd.DataFrame) -> pd.Series:
    if "params.final" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["params.final"].map(lambda v: v is True).astype(bool)


def _runs(df: pd.DataFrame):
    """(label, step records, final record or None) per training run (case): its source and whatever differs
    between the runs (learning rate, length, batch, speed options: chart_specs_training.run_labels)."""
    from andromeda.report.chart_specs_training import run_labels  # here: its charts register after these

    df = _ok(df)
    finals = df[_is_final(df)]
    steps = df[~_is_final(df)]
    labels = run_labels(df) if len(df) else {}
    for cid, g in steps.groupby("case_id", sort=False):
        final = finals[finals["case_id"] == cid]
        final = final.iloc[-1] if len(final) else None
        yield labels[cid], g.assign(_step=pd.to_numeric(g["params.step"], errors="coerce")).sort_values("_step"), final


def _final_samples(recs: Sequence[Record], final) -> list[float]:
    """Per-step losses kept in the final record's samples (every step, not only the logged ones)."""
    if final is None:
        return []
    for r in recs:
        if r.case_id == final["case_id"] and r.params.get("final") is True:
            return [np.nan if v is None else v for v in r.samples.get("loss", [])]
    return []


@register("training", "loss", "Training loss vs step", key=True)
def training_loss(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if "metrics.loss" not in df.columns:
        return False
    drawn, floors = False, set()
    runs = list(_runs(df))
    for label, g, final in runs:
        every = _final_samples(recs, final)
        if every:  # with several runs the thin line goes unnamed: its colour is its run's
            line = ax.plot(np.arange(1, len(every) + 1), every, linewidth=0.6, alpha=0.45,
                           label=f"{label} · train (each step)" if len(runs) == 1 else "_nolegend_")[0]
            ax.plot(g["_step"], g["metrics.loss"], color=line.get_color(), label=f"{label} · train (interval mean)")
        else:
            line = ax.plot(g["_step"], g["metrics.loss"], label=f"{label} · train")[0]
        drawn = True
        if "metrics.val_loss" in g.columns:
            v = g.dropna(subset=["metrics.val_loss"])
            if len(v):
                ax.plot(v["_step"], v["metrics.val_loss"], "o--", color=line.get_color(), markersize=4,
                        label=f"{label} · validation")
        if final is not None and pd.notna(final.get("metrics.floor_ppl", np.nan)) \
                and final["metrics.floor_ppl"] not in floors:  # runs on one data source share one floor line
            floors.add(final["metrics.floor_ppl"])
            ax.axhline(np.log(final["metrics.floor_ppl"]), color="black", linestyle=":", linewidth=1,
                       label=f"entropy floor H = {fmt_number(np.log(final['metrics.floor_ppl']), 4)} nats")
    if drawn:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
    return drawn


@register("training", "val_ppl", "Validation perplexity vs step, with the entropy floor", key=True)
def training_val_ppl(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if "metrics.val_ppl" not in df.columns:
        return False
    drawn, floors = False, set()
    for label, g, final in _runs(df):
        v = g.dropna(subset=["metrics.val_ppl"])
        if v.empty:
            continue
        line = ax.plot(v["_step"], v["metrics.val_ppl"], "o-", markersize=4, label=label)[0]
        drawn = True
        if final is not None and pd.notna(final.get("metrics.floor_ppl", np.nan)) \
                and float(final["metrics.floor_ppl"]) not in floors:  # one floor line per data source
            floor = float(final["metrics.floor_ppl"])
            floors.add(floor)
            ax.axhline(floor, color=line.get_color(), linestyle=":", linewidth=1.2,
                       label=f"entropy floor exp(H) = {fmt_number(floor, 4)}")
            ax.axhline(1.1 * floor, color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.6,
                       label="floor + 10%")
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation perplexity")
    return drawn


@register("training", "tokens_per_s", "Training throughput vs step")
def training_tokens_per_s(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    if "metrics.tokens_per_s" not in df.columns:
        return False
    drawn = False
    for label, g, _ in _runs(df):
        ax.plot(g["_step"], g["metrics.tokens_per_s"], marker=".", label=label)
        drawn = True
    if drawn:
        ax.set_ylim(bottom=0)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("throughput (tokens/s)")
    return drawn


def _cache_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, records) per source x data x window scheme that swept a KV cache (some cache != off)."""
    if "params.cache" not in df.columns:
        return []
    ok = _ok(df)
    keys = [k for k in ("source", "params.data", "params.seq_len", "params.stride") if k in ok.columns]
    key_of = ok[keys].apply(lambda row: tuple(_fmt_param(k, v) for k, v in zip(keys, row, strict=True)), axis=1)
    groups = []
    for combo in dict.fromkeys(key_of):
        g = ok[key_of == combo]
        if (g["params.cache"] != "off").any():
            groups.append((combo, g))
    varying = [i for i in range(len(keys)) if len({c[i] for c, _ in groups}) > 1] or [0]
    return [(" · ".join(combo[i] for i in varying), g) for combo, g in groups]


def _fmt_param(key: str, v) -> str:
    if key == "params.stride":
        return "non-overlapping" if v is None or (isinstance(v, float) and np.isnan(v)) else f"stride={int(v)}"
    if key == "params.seq_len":
        return f"window={int(v)}"
    return str(v)


@register("perplexity", "vs_cache", "Perplexity vs KV-cache quantization", key=True)
def perplexity_vs_cache(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    groups = _cache_groups(df)
    if not groups or "metrics.ppl" not in df.columns:
        return False
    modes = [m for m in CACHE_ORDER if any((g["params.cache"] == m).any() for _, g in groups)]
    width = 0.8 / len(groups)
    for j, (label, g) in enumerate(groups):
        xs, ys, notes = [], [], []
        for i, mode in enumerate(modes):
            row = g[g["params.cache"] == mode]
            if row.empty:
                continue
            r = row.iloc[0]
            xs.append(i + (j - (len(groups) - 1) / 2) * width)
            ys.append(float(r["metrics.ppl"]))
            diff = r.get("metrics.logit_max_abs_diff", np.nan)
            notes.append(fmt_number(ys[-1], 4) + ("" if pd.isna(diff) else f"\nmax Δlogit {fmt_number(diff, 2)}"))
        bars = ax.bar(xs, ys, width=width, label=label)
        ax.bar_label(bars, labels=notes, fontsize=7)
    ax.set_xticks(range(len(modes)), ["no cache" if m == "off" else f"cache {m}" for m in modes])
    ax.set_ylabel("perplexity")
    ax.margins(y=0.2)
    return True


@register("perplexity", "kv_bytes", "KV-cache bytes per token vs quantization")
def perplexity_kv_bytes(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    drawn = False
    for label, g in _cache_groups(df):
        if "metrics.kv_bytes_per_token" not in g.columns:
            continue
        g = g.dropna(subset=["metrics.kv_bytes_per_token"])
        ms = [m for m in CACHE_ORDER if (g["params.cache"] == m).any()]
        if not ms:
            continue
        ys = [float(g.loc[g["params.cache"] == m, "metrics.kv_bytes_per_token"].iloc[0]) for m in ms]
        ax.plot([f"cache {m}" for m in ms], ys, "o-", label=label)
        for m, y in zip(ms, ys, strict=True):
            ax.annotate(fmt_number(y, 4), (f"cache {m}", y), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7)
        drawn = True
    if drawn:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("KV cache (bytes/token)")
    return drawn


def _roles(df: pd.DataFrame) -> pd.DataFrame:
    ok = _ok(df)
    if "params.role" not in ok.columns:
        return ok.iloc[0:0]
    return ok[ok["params.role"].isin(["teacher", "student"])]


def _ts_bars(metric: str, ylabel: str):
    def draw(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
        col = f"metrics.{metric}"
        rows = _roles(df)
        if col not in rows.columns or rows[col].isna().all():
            return False
        labels, ys, colors = [], [], []
        for _, r in rows.iterrows():
            if pd.isna(r[col]):
                continue
            labels.append(f"{r['params.role']}\n{r.get('params.model', '')}"[:60])
            ys.append(float(r[col]))
            colors.append("tab:gray" if r["params.role"] == "teacher" else "tab:blue")
        bars = ax.bar(range(len(ys)), ys, color=colors)
        ax.bar_label(bars, labels=[fmt_number(v, 4) for v in ys], fontsize=8)
        ax.set_xticks(range(len(ys)), labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
        return True

    return draw


register("teacher_student", "ppl", "Perplexity: teacher vs student", key=True)(_ts_bars("ppl", "perplexity"))
register("teacher_student", "decode", "Decode throughput: teacher vs student")(
    _ts_bars("decode_tokens_per_s", "decode throughput (tokens/s)"))
register("teacher_student", "kv", "KV cache per token: teacher vs student")(
    _ts_bars("kv_bytes_per_token", "KV cache (bytes/token)"))


# ---- the teacher/student LaTeX table ------------------------------------------------------------
TS_ROWS = (
    ("ppl", r"Perplexity $\downarrow$"),
    ("bits_per_byte", r"Bits per byte $\downarrow$"),
    ("decode_tokens_per_s", r"Throughput (tok/s) $\uparrow$"),
    ("prefill_tokens_per_s", r"Prefill (tok/s) $\uparrow$"),
    ("kv_bytes_per_token", r"KV-Cache (bytes/tok) $\downarrow$"),
    ("peak_mib", r"Peak memory (MiB) $\downarrow$"),
)


def teacher_student_latex(records: Sequence[Record], caption: str = "Teacher vs student") -> str:
    """The source document's table: one row per metric, columns Teacher, Student, Change
    (student / teacher), one table per teacher_student case. Needs booktabs. Empty if no such records."""
    by_case: dict[str, dict[str, Record]] = {}
    for r in records:
        if r.scenario == "teacher_student" and r.status == "ok" and r.params.get("role") in ("teacher", "student"):
            by_case.setdefault(r.case_id, {})[r.params["role"]] = r
    tables = []
    for case_id, roles in by_case.items():
        if set(roles) != {"teacher", "student"}:
            continue
        t, s = roles["teacher"].metrics, roles["student"].metrics
        lines = [
            "\\begin{table}[h]",
            "\\centering",
            f"\\caption{{{latex_escape(caption)}: {latex_escape(str(roles['student'].params.get('model')))} vs "
            f"{latex_escape(str(roles['teacher'].params.get('model')))}. Change = student / teacher.}}",
            f"\\label{{tab:teacher-student-{case_id}}}",
            "\\begin{tabular}{lrrr}",
            "\\toprule",
            "\\textbf{Metric} & \\textbf{Teacher} & \\textbf{Student} & \\textbf{Change} \\\\",
            "\\midrule",
        ]
        for key, label in TS_ROWS:
            if key not in t or key not in s or t[key] is None or s[key] is None:
                continue
            change = f"{s[key] / t[key]:.2f}$\\times$" if t[key] else "---"
            lines.append(f"{label} & {latex_number(fmt_number(t[key]))} & {latex_number(fmt_number(s[key]))} & "
                         f"{change} \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + ("\n" if tables else "")


__all__ = ["teacher_student_latex", "TS_ROWS"]
