"""Library output goes to the run's log file, not the terminal.

While a run is inside `library_output_to(path)`, file descriptor 2 is the log file, so everything the
libraries under the run write to stderr lands there: Python warnings (a transformers FutureWarning),
library loggers (transformers' logging, x-transformers' loguru), and messages of C++ code (torch's
allocator and profiler). What the user must see (the progress line, the suite's own warnings) goes to the
stream it yields: the terminal's stderr, on a duplicate of the old descriptor 2.

sys.stderr itself is left as it is: an object bound to it during the run (a logging handler a library
creates while its model is built) keeps working after the run, and writes to the terminal again.
Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

LOG_NAME = "run.log"


def _on_fd2(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: no descriptor
        return False


@contextlib.contextmanager
def library_output_to(path: str | Path, header: str = "andromeda run") -> Iterator[TextIO]:
    """Append stderr (descriptor 2) to `path` while inside; yield a text stream on the terminal's stderr.

    Where sys.stderr is not descriptor 2 (a test's capture), it is yielded as the terminal, and only what
    is written to descriptor 2 directly (C++ messages) goes to the log."""
    path = Path(path)
    old = sys.stderr
    with contextlib.suppress(Exception):
        old.flush()
    log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in finally
    log.write(f"# {header}, {datetime.now().isoformat(timespec='seconds')}: warnings and messages of the "
              "libraries it ran\n")
    log.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to redirect
        saved = None
    terminal: TextIO = old
    if saved is not None and _on_fd2(old):
        terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                             errors="backslashreplace")
    if saved is not None:
        os.dup2(log.fileno(), 2)
    try:
        yield terminal
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if terminal is not old:
            terminal.close()
        log.close()


def logged_lines(path: str | Path, since: int = 0) -> list[str]:
    """The non-empty lines of the log after byte offset `since`, without the header lines ('# ...')."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip() and not line.startswith("# ")]


__all__ = ["library_output_to", "logged_lines", "LOG_NAME"]
