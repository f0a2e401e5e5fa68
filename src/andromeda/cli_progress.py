"""Terminal presentation for `andromeda run` and `train`: a live progress line (case i/n, what it sweeps, ETA),
kept lines (a training step's loss, tokens/s, MFU, ETA), and the summaries after a run: cases and records
counted apart, and a training run's final losses against their floor."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from andromeda.runs.progress import Progress as RunnerProgress
from andromeda.runs.runner import RunResult

DESCRIPTION_WIDTH = 90


def _console(stream=None) -> Console:
    return Console(file=stream) if stream is not None else Console(stderr=True)


def case_description(source: str, scenario: str, params: dict[str, Any]) -> str:
    """The case as the progress line shows it: source, scenario, then the swept parameters (what changes from
    case to case), then the rest; lists and mappings left out."""
    from andromeda.scenarios.config import get_config

    cfg = get_config(scenario)
    swept = [k for k in (cfg.SWEEP if cfg is not None else ()) if k in params]
    swept += [k for k in params if k not in swept and k in ("step", "final")]
    rest = [k for k in params if k not in swept]
    pts = " ".join(f"{k}={params[k]}" for k in (*swept, *rest) if not isinstance(params[k], (list, dict)))
    return f"{source} {scenario} {pts}"


class RichProgress(RunnerProgress):
    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.bar: Progress | None = None
        self.task = None

    @property
    def console(self) -> Console:
        return self.bar.console if self.bar is not None else _console(self.stream)

    def start(self, total: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=_console(self.stream),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total)

    def _describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=escape(text[:DESCRIPTION_WIDTH]))

    def case(self, case, index: int) -> None:
        self._describe(case_description(case.source, case.scenario, case.params))

    def note(self, text: str) -> None:
        self._describe(text)

    def log(self, text: str) -> None:
        """A line printed above the live bar (it stays on screen), and the bar's description."""
        self.console.print(escape(text), highlight=False, soft_wrap=True)
        self._describe(text)

    def warn(self, text: str) -> None:
        self.console.print(escape(f"warning: {text}"), highlight=False, soft_wrap=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self._describe("done")
            self.bar.stop()


def summary_rows(result: RunResult) -> list[tuple[str, ...]]:
    """Two rows with what they count: cases (one model x one sweep point) and records (what the cases wrote:
    one or many each), by status; cases already done before a --resume counted apart."""
    c, k = result.counts, result.case_counts
    statuses = ("ok", "oom", "error", "skipped")
    cases = ("cases", str(result.total), *(str(k.get(s, 0)) for s in statuses), str(result.skipped_existing))
    records = ("records", str(sum(c.values())), *(str(c.get(s, 0)) for s in statuses),
               str(sum(result.earlier.values())))
    return [cases, records]


def print_summary(result: RunResult, stream=None) -> None:
    t = Table(title=f"run: {result.out_dir}")
    for col in ("", "total", "ok", "oom", "error", "skipped", "already done (--resume)"):
        t.add_column(col, justify="left" if not col else "right")
    for row in summary_rows(result):
        t.add_row(*row)
    t.caption = "case: one model at one sweep point; it writes one record or more (training: one per logged step)"
    _console(stream).print(t)


def print_log_note(result: RunResult, stream=None) -> None:
    if result.log_path is not None and result.log_lines:
        _console(stream).print(escape(f"library warnings and messages: {result.log_lines} line(s) in "
                                      f"{result.log_path}"), highlight=False, soft_wrap=True)


def _fmt(x: Any, digits: int = 4) -> str | None:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else None


def training_summary_lines(records: Iterable) -> list[str]:
    """One line per finished training case (its final record): final train and validation loss, perplexity and
    bits per byte, each against its floor where the data's entropy is known, and the median tokens/s."""
    lines = []
    for r in records:
        if r.scenario != "training" or r.status != "ok" or not r.params.get("final"):
            continue
        m = r.metrics
        parts = [f"final train loss {_fmt(m.get('final_train_loss'))}"]
        if (v := _fmt(m.get("val_loss"))) is not None:
            parts.append(f"val loss {v}")
        if (v := _fmt(m.get("val_ppl"))) is not None:
            floor = _fmt(m.get("floor_ppl"))
            over = m.get("val_ppl_over_floor")
            parts.append(f"val perplexity {v}" + (f" (floor {floor}: {over:.3f}x it)" if floor and over else ""))
        if (v := _fmt(m.get("val_bits_per_byte"))) is not None:
            floor = _fmt(m.get("entropy_bits_per_byte"))
            parts.append(f"{v} bits/byte" + (f" (floor {floor})" if floor else ""))
        if (v := m.get("tokens_per_s")) is not None and math.isfinite(v):
            parts.append(f"{v:,.0f} tokens/s")
        if (v := m.get("mfu")) is not None and math.isfinite(v):
            parts.append(f"MFU {100 * v:.1f}%")
        lines.append(f"{r.source}: " + ", ".join(parts))
    return lines


def print_training_summary(records: Iterable, stream=None) -> None:
    out = stream or sys.stdout
    for line in training_summary_lines(records):
        print(line, file=out)


__all__ = ["RichProgress", "print_summary", "print_log_note", "summary_rows", "case_description",
           "training_summary_lines", "print_training_summary"]
