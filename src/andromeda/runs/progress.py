"""Progress: the runner's view of a run's progress (case i of n, notes, kept lines, warnings). The runner calls
it; the command line plugs a rich progress bar in (cli_progress.py). By default it shows nothing but warnings."""

from __future__ import annotations

import sys

from andromeda.runs.context import Case


class Progress:
    """The runner's view of progress; the CLI plugs a rich progress bar in.

    `stream` is where the user's terminal is: the runner attaches it (attach) before start, so that what
    the user must see reaches the terminal while library output goes to the run's log."""

    stream = None

    def attach(self, stream) -> None:
        self.stream = stream

    def start(self, total: int) -> None: ...
    def case(self, case: Case, index: int) -> None: ...
    def note(self, text: str) -> None: ...
    def advance(self) -> None: ...
    def stop(self) -> None: ...

    def log(self, text: str) -> None:
        """A line worth keeping on screen (a training step's loss): by default, the live note."""
        self.note(text)

    def warn(self, text: str) -> None:
        """Something the user must see even without a progress bar: on stderr."""
        print(f"warning: {text}", file=self.stream or sys.stderr)
