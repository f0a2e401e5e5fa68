"""Charts of the multi-process scenarios. Imported by charts._load_chart_specs; no torch.

data_parallel  tokens/s vs processes with the ideal (linear) line, scaling efficiency vs
               processes, communication share vs processes, per-rank box plots of step time
collectives    bus bandwidth vs message size
load_balance   per-rank box plots of compute time
context_parallel  prefill latency vs processes per length with the ideal 1/N line and the spec's 100 ms line,
               scaling efficiency vs processes, communication share vs processes
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from andromeda.records import Record
from andromeda.report.charts import register
from andromeda.report.format import fmt_number

_RANK = re.compile(r"^(?P<name>.+)@rank(?P<rank>\d+)$")


def _points(recs: Sequence[Record]) -> list[Record]:
    """ok data_parallel records of one case each (not the efficiency summaries)."""
    return [r for r in recs if r.status == "ok" and r.params.get("efficiency") is not True
            and isinstance(r.params.get("ranks"), int) and "tokens_per_s" in r.metrics]


def _curves(recs: Sequence[Record]) -> dict[str, list[Record]]:
    """label -> records of one (source, strategy, scaling, batch, seq_len) curve, by ranks."""
    out: dict[str, list[Record]] = {}
    sources = {r.source for r in recs}
    for r in _points(recs):
        p = r.params
        parts = ([r.source] if len(sources) > 1 else []) + [str(p.get("strategy")), str(p.get("scaling")),
                                                            f"b={p.get('batch')}", f"n={p.get('seq_len')}"]
        out.setdefault(" · ".join(parts), []).append(r)
    return {k: sorted(v, key=lambda r: r.params["ranks"]) for k, v in out.items()}


def _ranks_axis(ax: Axes, ns: set[int]) -> None:
    ticks = sorted(ns)
    if len(ticks) > 1 and ticks[-1] / ticks[0] > 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("processes (GPUs)")


@register("data_parallel", "throughput_vs_ranks", "Training throughput vs processes, with the ideal line",
          key=True)
def throughput_vs_ranks(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    drawn = False
    for label, curve in _curves(recs).items():
        x = np.array([r.params["ranks"] for r in curve], dtype=float)
        y = np.array([r.metrics["tokens_per_s"] for r in curve])
        lo = np.array([r.metrics.get("tokens_per_s_ci_low", np.nan) for r in curve])
        hi = np.array([r.metrics.get("tokens_per_s_ci_high", np.nan) for r in curve])
        yerr = np.vstack([np.nan_to_num(y - lo).clip(0), np.nan_to_num(hi - y).clip(0)])
        line = ax.errorbar(x, y, yerr=yerr, marker="o", markersize=4, capsize=3, label=label)[0]
        if len(x) > 1:
            ax.plot(x, y[0] * x / x[0], linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{label} · ideal (linear from {int(x[0])})")
        ns.update(int(v) for v in x)
        drawn = True
    if drawn:
        _ranks_axis(ax, ns)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("throughput, all ranks (tokens/s)")
    return drawn


@register("data_parallel", "efficiency", "Scaling efficiency vs processes", key=True)
def efficiency(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    drawn = False
    for r in recs:
        if r.status != "ok" or r.params.get("efficiency") is not True:
            continue
        x, eff = r.samples.get("ranks", []), r.samples.get("scaling_efficiency", [])
        if len(x) < 2 or len(x) != len(eff):
            continue
        p = r.params
        label = f"{p.get('strategy')} · {p.get('scaling')} · b={p.get('batch')} · n={p.get('seq_len')}"
        _efficiency_curve(ax, x, eff, label)
        ns.update(int(v) for v in x)
        drawn = True
    if drawn:
        _efficiency_axes(ax, ns, "scaling efficiency  T(n) / (n/n₀ · T(n₀))")
    return drawn


def _efficiency_curve(ax: Axes, x: Sequence[int], eff: Sequence[float], label: str) -> None:
    """One efficiency curve against process counts, each point annotated with its value."""
    ax.plot(x, eff, marker="o", markersize=4, label=label)
    for xi, ei in zip(x, eff, strict=True):
        ax.annotate(fmt_number(ei, 2), (xi, ei), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")


def _efficiency_axes(ax: Axes, ns: set[int], ylabel: str) -> None:
    """The linear-scaling line, the process-count axis over `ns` and the efficiency axis from 0."""
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="linear scaling")
    _ranks_axis(ax, ns)
    ax.set_ylim(bottom=0, top=max(1.1, ax.get_ylim()[1]))
    ax.set_ylabel(ylabel)


@register("data_parallel", "comm_share", "Communication share of a step vs processes")
def comm_share(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    drawn = False
    for label, curve in _curves(recs).items():
        pts = [(r.params["ranks"], r.metrics["comm_share"]) for r in curve if "comm_share" in r.metrics]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, marker="o", markersize=4, label=label)
        ns.update(int(v) for v in x)
        drawn = True
    if drawn:
        _ranks_axis(ax, ns)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of the step with a collective in flight")
    return drawn


def _per_rank(rec: Record, name: str) -> list[tuple[int, list[float]]]:
    out = []
    for k, v in rec.samples.items():
        m = _RANK.match(k)
        if m and m["name"] == name and v:
            out.append((int(m["rank"]), [float(x) for x in v if x is not None]))
    return sorted(out)


def _rank_boxes(ax: Axes, cases: list[tuple[str, Record]], name: str, ylabel: str) -> bool:
    """Side-by-side box plots: one group per case, one box per rank."""
    pos, ticks, drawn = 0.0, [], False
    for i, (label, rec) in enumerate(cases):
        ranks = _per_rank(rec, name)
        if not ranks:
            continue
        color = f"C{i % 10}"
        xs = [pos + j for j in range(len(ranks))]
        ax.boxplot([s for _, s in ranks], positions=xs, widths=0.6, patch_artist=True, showfliers=True,
                   boxprops={"facecolor": color, "alpha": 0.45}, medianprops={"color": "black"})
        ax.plot([], [], "s", color=color, alpha=0.6, label=label)
        ticks += [(x, str(r)) for x, (r, _) in zip(xs, ranks, strict=True)]
        pos += len(ranks) + 1
        drawn = True
    if drawn:
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=7 if len(ticks) > 16 else 9)
        ax.set_xlabel("rank")
        ax.set_ylabel(ylabel)
    return drawn


@register("data_parallel", "step_ms_per_rank", "Step time per rank (at the most processes of each curve)")
def step_ms_per_rank(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    cases = [(f"{label} · {curve[-1].params['ranks']} ranks", curve[-1]) for label, curve in _curves(recs).items()
             if curve[-1].params["ranks"] > 1]
    return _rank_boxes(ax, cases, "step_ms", "step time (ms)")


@register("load_balance", "compute_ms_per_rank", "Compute time per rank, each rank alone", key=True)
def compute_ms_per_rank(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ok = sorted((r for r in recs if r.status == "ok"), key=lambda r: (r.source, r.params.get("ranks", 0)))
    sources = {r.source for r in ok}
    cases = [((f"{r.source} · " if len(sources) > 1 else "") + f"{r.params.get('mode')} · {r.params.get('ranks')} "
              "ranks", r) for r in ok]
    return _rank_boxes(ax, cases, "compute_ms", "compute time (ms)")


@register("collectives", "busbw", "Bus bandwidth vs message size (nccl-tests definition)", key=True)
def busbw(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    groups: dict[str, list[Record]] = {}
    for r in recs:
        if r.status == "ok" and "busbw_gbps" in r.metrics:
            groups.setdefault(f"{r.params.get('op')} · {r.params.get('ranks')} ranks", []).append(r)
    drawn = False
    for label, g in groups.items():
        g = sorted(g, key=lambda r: r.params["size_bytes"])
        if g[0].params.get("ranks") == 1:
            continue  # one rank moves nothing between ranks: its bus bandwidth is 0 by definition
        ax.plot([r.params["size_bytes"] / 2**20 for r in g], [r.metrics["busbw_gbps"] for r in g], marker="o",
                markersize=4, label=label)
        drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("size S (MiB; all-gather: the gathered output)")
        ax.set_ylabel("bus bandwidth (GB/s)")
    return drawn


# ---- context_parallel ------------------------------------------------------------------------------
SPEC_MS = 100.0  # the spec's claim: "32,000+ tokens in < 100 ms"


def _cp_curves(recs: Sequence[Record], efficiency: bool) -> dict[str, list[Record]]:
    """label -> ok context_parallel records of one (model, dtype, batch, length) by ranks: the cases, or the
    efficiency records."""
    ok = [r for r in recs if r.status == "ok" and bool(r.params.get("efficiency")) is efficiency
          and isinstance(r.params.get("ranks"), int) and "latency_ms" in r.metrics]
    many = len({(r.params.get("model"), r.params.get("dtype"), r.params.get("batch")) for r in ok}) > 1
    out: dict[str, list[Record]] = {}
    for r in sorted(ok, key=lambda r: (str(r.params.get("model")), r.params.get("seq_len", 0))):
        p = r.params
        label = f"{p.get('seq_len'):,} tokens"
        if many:
            label = f"{p.get('model')} · {p.get('dtype')} · b={p.get('batch')} · {label}"
        out.setdefault(label, []).append(r)
    return {k: sorted(v, key=lambda r: r.params["ranks"]) for k, v in out.items()}


@register("context_parallel", "latency_vs_ranks",
          "Prefill latency vs processes (ideal 1/N; spec: 100 ms)", key=True)
def cp_latency_vs_ranks(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    for label, curve in _cp_curves(recs, efficiency=False).items():
        x = np.array([r.params["ranks"] for r in curve], dtype=float)
        y = np.array([r.metrics["latency_ms"] for r in curve])
        lo = np.array([r.metrics.get("latency_ms_ci_low", np.nan) for r in curve])
        hi = np.array([r.metrics.get("latency_ms_ci_high", np.nan) for r in curve])
        yerr = np.vstack([np.nan_to_num(y - lo).clip(0), np.nan_to_num(hi - y).clip(0)])
        line = ax.errorbar(x, y, yerr=yerr, marker="o", markersize=4, capsize=3, label=label)[0]
        if len(x) > 1:
            ax.plot(x, y[0] * x[0] / x, linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{label} · ideal T({int(x[0])})·{int(x[0])}/N")
        ns.update(int(v) for v in x)
    if not ns:
        return False
    ax.axhline(SPEC_MS, color="black", linestyle=":", linewidth=1.2, label="100 ms (spec: 32,000+ tokens in < 100 ms)")
    _ranks_axis(ax, ns)
    ax.set_yscale("log")
    ax.set_ylabel("prefill latency, slowest rank (ms)")
    return True


@register("context_parallel", "efficiency", "Prefill scaling efficiency vs processes", key=True)
def cp_efficiency(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    for label, curve in _cp_curves(recs, efficiency=True).items():
        x = [r.params["ranks"] for r in curve]
        eff = [r.metrics["scaling_efficiency"] for r in curve]
        _efficiency_curve(ax, x, eff, label)
        ns.update(x)
    if not ns:
        return False
    _efficiency_axes(ax, ns, "scaling efficiency  T(n₀)·n₀ / (N·T(N))")
    return True


@register("context_parallel", "comm_share", "Prefill communication share vs processes")
def cp_comm_share(ax: Axes, df: pd.DataFrame, recs: Sequence[Record]) -> bool:
    ns: set[int] = set()
    for label, curve in _cp_curves(recs, efficiency=False).items():
        pts = [(r.params["ranks"], r.metrics["comm_share"]) for r in curve
               if r.params["ranks"] > 1 and "comm_share" in r.metrics]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, marker="o", markersize=4, label=label)
        ns.update(x)
    if not ns:
        return False
    _ranks_axis(ax, ns)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of a rank's prefill in collectives")
    return True
