"""Progress for people: a rich bar on a terminal, log lines (`ingest.ops.progress`) otherwise."""

from __future__ import annotations

import sys

from rich.progress import Progress as RichProgress
from rich.progress import TaskID

from ingest.ops.progress import LoggedProgress, Progress


class BarProgress:
    """A transient rich progress bar on stderr."""

    def __init__(self, what: str, total: int) -> None:
        self._bar = RichProgress(transient=True)
        self._task: TaskID = self._bar.add_task(what, total=total)
        self._bar.start()

    def update(self, done: int) -> None:
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        self._bar.stop()


def terminal_progress(what: str, total: int) -> Progress:
    """A bar when stderr is a terminal, else log lines."""
    return BarProgress(what, total) if sys.stderr.isatty() else LoggedProgress(what, total)
