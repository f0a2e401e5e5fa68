"""Terminal presentation for `andromeda run`: a rich progress bar (case i/n, ETA) and a summary table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from andromeda.bench.runner import Progress as RunnerProgress
from andromeda.bench.runner import RunResult

console = Console(stderr=True)


class RichProgress(RunnerProgress):
    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total)

    def case(self, case, index: int) -> None:
        pts = " ".join(f"{k}={v}" for k, v in case.params.items() if not isinstance(v, (list, dict)))
        self.bar.update(self.task, description=f"{case.source} {case.scenario} {pts}"[:90])

    def note(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def advance(self) -> None:
        self.bar.advance(self.task)

    def stop(self) -> None:
        self.bar.update(self.task, description="done")
        self.bar.stop()


def print_summary(result: RunResult) -> None:
    t = Table(title=f"run: {result.out_dir}")
    for col in ("cases", "ok", "oom", "error", "skipped", "resumed (already done)"):
        t.add_column(col, justify="right")
    c = result.counts
    t.add_row(str(result.total), str(c.get("ok", 0)), str(c.get("oom", 0)), str(c.get("error", 0)),
              str(c.get("skipped", 0)), str(result.skipped_existing))
    console.print(t)
