"""Progress of long work (subscribing thousands of mailboxes) as log lines; a command on a terminal
may show it as a bar instead (`ingest.commands.progress`), through the same small port."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Progress(Protocol):
    def update(self, done: int) -> None:
        """`done` of the total are finished."""
        ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], Progress]
"""(what is being done, e.g. "subscribed mailboxes", total) → a progress reporter."""


class LoggedProgress:
    """One log line at every further 10 % (off a terminal: containers, CI, `kubectl logs`)."""

    def __init__(self, what: str, total: int) -> None:
        self._what = what
        self._total = max(total, 1)
        self._started = time.monotonic()
        self._next_log = 0.1

    def update(self, done: int) -> None:
        fraction = done / self._total
        if fraction >= self._next_log:
            rate = done / max(1e-6, time.monotonic() - self._started)
            log.info("%s %d/%d (%.0f%%, %.0f/s)", self._what, done, self._total,
                     fraction * 100, rate)  # fmt: skip
            while self._next_log <= fraction:
                self._next_log += 0.1

    def close(self) -> None:
        pass
