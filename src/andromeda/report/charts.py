"""Charts: a registry of chart specs per scenario, rendered to PNG bytes with matplotlib's Agg canvas.

A new scenario adds its charts in `chart_specs.py` (or any module imported before rendering):

    @register("my_scenario", "vs_batch", "Latency vs batch size", key=True)
    def draw(ax, df, records) -> bool:   # df: load.frame(records); False = nothing to draw
        ...

Scenarios without specs get tables only. `key=True` charts also go into the summary panel.
Every chart is finished the same way (_style): a linear axis whose plotted values are all positive and span
more than a decade (max / min > 10) becomes a log axis, log ticks read as plain numbers, and the legend
sits outside the data (right of the axes; a lone chart is widened to make room).
pyplot is never imported: figures are built on `Figure` + `FigureCanvasAgg`, so no global backend
state changes and no display is needed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from andromeda.records import Record
from andromeda.report.format import fmt_number
from andromeda.report.load import by_scenario, frame
from andromeda.report.tables import safe_name

Draw = Callable[[Axes, pd.DataFrame, Sequence[Record]], bool]
FIGSIZE = (6.4, 4.2)
DPI = 130
DECADE = 10.0  # an axis whose positive values span more than this factor is drawn on a log scale
LEGEND_FONT = 8
SUMMARY_NAME = "summary"


@dataclass(frozen=True)
class ChartSpec:
    scenario: str
    name: str  # file stem suffix: charts/<scenario>_<name>.png
    title: str
    draw: Draw
    key: bool = False  # also drawn in the summary panel


@dataclass
class Chart:
    scenario: str
    name: str  # file stem, e.g. "latency_vs_seq_len"
    title: str
    png: bytes


CHARTS: dict[str, list[ChartSpec]] = {}


def register(scenario: str, name: str, title: str, key: bool = False) -> Callable[[Draw], Draw]:
    def deco(draw: Draw) -> Draw:
        specs = CHARTS.setdefault(scenario, [])
        specs[:] = [s for s in specs if s.name != name]  # re-registering replaces
        specs.append(ChartSpec(scenario, name, title, draw, key))
        return draw

    return deco


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


class _PlainLog(Formatter):
    """Log-axis ticks as plain numbers (128, 0.5) where matplotlib would write 2^7 or 5x10^-1."""

    def __init__(self, inner: Formatter):
        self.inner = inner

    def set_axis(self, axis) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs) -> None:
        super().set_locs(locs)
        self.inner.set_locs(locs)

    def __call__(self, x, pos=None) -> str:
        return fmt_number(float(x), 3) if self.inner(x, pos) else ""


def _plotted(ax: Axes, which: str) -> np.ndarray:
    """The finite x or y values of the lines drawn in data coordinates (markers along an edge left out)."""
    vals = []
    for line in ax.get_lines():
        if line.get_transform() != ax.transData:
            continue
        try:
            v = np.asarray(line.get_xdata() if which == "x" else line.get_ydata(), dtype=float)
        except (TypeError, ValueError):  # categorical data
            continue
        vals.append(v[np.isfinite(v)])
    return np.concatenate(vals) if vals else np.array([])


def log_where_a_decade(ax: Axes) -> list[str]:
    """Switch each linear axis whose plotted values are all > 0 and span more than DECADE to a log scale;
    return the axes switched ('x', 'y')."""
    switched = []
    for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        if axis.get_scale() != "linear" or axis.get_major_formatter().__class__.__name__ == "StrCategoryFormatter":
            continue
        v = _plotted(ax, which)
        if v.size >= 2 and v.min() > 0 and v.max() / v.min() > DECADE:
            (ax.set_xlim if which == "x" else ax.set_ylim)(v.min(), v.max(), auto=True)  # no 0 bound on a log axis
            (ax.set_xscale if which == "x" else ax.set_yscale)("log")
            ax.relim()
            ax.autoscale_view()
            switched.append(which)
    return switched


def _style(ax: Axes, title: str, resize: bool = False, legend_below: bool = False) -> None:
    log_where_a_decade(ax)
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log" and not isinstance(axis.get_major_formatter(), _PlainLog):
            axis.set_major_formatter(_PlainLog(axis.get_major_formatter()))
            axis.set_minor_formatter(_PlainLog(axis.get_minor_formatter()))
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    handles, labels = ax.get_legend_handles_labels()
    if handles and legend_below:  # outside the data, under the axes (panels of the summary figure)
        ax.legend(fontsize=LEGEND_FONT - 1, loc="upper center", bbox_to_anchor=(0.5, -0.16), borderaxespad=0,
                  ncol=2 if len(handles) > 3 and max(map(len, labels)) <= 40 else 1, frameon=False)
    elif handles:  # outside the data, right of the axes; widen a lone chart by the legend's width
        ax.legend(fontsize=LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        if resize:
            longest = max(len(lb) for lb in labels)
            width = 0.6 + 0.075 * longest * LEGEND_FONT / 8
            ax.figure.set_size_inches(FIGSIZE[0] + width, max(FIGSIZE[1], 0.18 * len(handles) + 1.0))


def _load_chart_specs() -> None:
    """Import chart_specs.py and every chart_specs_<name>.py beside it (each registers its charts)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name == "chart_specs" or mod.name.startswith("chart_specs_"):
            importlib.import_module(f"andromeda.report.{mod.name}")


def render_charts(records: Sequence[Record]) -> tuple[list[Chart], list[str]]:
    """Every registered chart that has data, then the summary panel; and the errors of failed charts."""
    _load_chart_specs()

    charts: list[Chart] = []
    errors: list[str] = []
    keyed: list[tuple[ChartSpec, pd.DataFrame, Sequence[Record]]] = []
    for scenario, recs in by_scenario(records).items():
        specs = CHARTS.get(scenario, [])
        if not specs:
            continue
        df = frame(recs)
        for spec in specs:
            fig = Figure(figsize=FIGSIZE, layout="constrained")
            ax = fig.add_subplot()
            try:
                drawn = spec.draw(ax, df, recs)
            except Exception as e:  # a broken chart must not cost the tables
                errors.append(f"chart {scenario}/{spec.name} failed: {type(e).__name__}: {e}")
                continue
            if not drawn:
                continue
            _style(ax, spec.title, resize=True)
            charts.append(Chart(scenario, f"{safe_name(scenario)}_{spec.name}", spec.title, _png(fig)))
            if spec.key:
                keyed.append((spec, df, recs))
    if keyed:
        charts.insert(0, Chart("", SUMMARY_NAME, "Summary", _summary(keyed)))
    return charts, errors


def _summary(keyed: list[tuple[ChartSpec, pd.DataFrame, Sequence[Record]]]) -> bytes:
    ncols = 2 if len(keyed) > 1 else 1
    nrows = math.ceil(len(keyed) / ncols)
    fig = Figure(figsize=(FIGSIZE[0] * ncols, (FIGSIZE[1] + 1.2) * nrows), layout="constrained")  # legends below
    for i, (spec, df, recs) in enumerate(keyed):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        spec.draw(ax, df, recs)
        _style(ax, f"{spec.scenario}: {spec.title}", legend_below=True)
    fig.suptitle("Andromeda benchmark summary", fontsize=13)
    return _png(fig)
