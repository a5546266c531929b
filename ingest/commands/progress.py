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

    def update(self, done: int, total: int | None = None) -> None:
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._bar.stop()


def terminal_progress(what: str, total: int) -> Progress:
    """A bar when stderr is a terminal, else log lines."""
    return BarProgress(what, total) if sys.stderr.isatty() else LoggedProgress(what, total)


class ReplayProgress:
    """`ingest.state.replay`'s progress callback (records read, records to read) on a
    `terminal_progress`, opened at the first call that knows the total: a replay in several
    processes learns it before its workers start, and no line goes out before that."""

    def __init__(self, what: str = "replay: records") -> None:
        self._what = what
        self._progress: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            if total <= 0:
                return
            self._progress = (
                BarProgress(self._what, total)
                if sys.stderr.isatty()
                else LoggedProgress(self._what, total, start_line=True)
            )
        self._progress.update(done, total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
