"""Progress of long work (subscribing thousands of mailboxes, replaying a log) as log lines; a
command on a terminal may show it as a bar instead (`ingest.commands.progress`), through the same
small port.

Off a terminal (containers, CI, pipes, `kubectl logs`) a line is written at every further 10 %
and at least every `every` seconds while the work moves, so a slow step is never silent; the
total is part of every line, and a line is only written once the total is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ingest.ops.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

EVERY_S = 10.0
"""The longest silence of a `LoggedProgress` while the work moves."""


class Progress(Protocol):
    def update(self, done: int, total: int | None = None) -> None:
        """`done` of the total are finished (`total`: a new estimate of it, if it changed)."""
        ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], Progress]
"""(what is being done, e.g. "subscribed mailboxes", total) → a progress reporter."""


class LoggedProgress:
    """One log line at every further 10 %, and every `every` seconds in between; with
    `start_line`, one at the first update too (the work and its total, before anything is done)."""

    def __init__(
        self,
        what: str,
        total: int,
        *,
        every: float = EVERY_S,
        start_line: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._what = what
        self._total = total
        self._clock = clock
        self._every = every
        self._started = clock.monotonic()
        self._next_share = 0.1
        self._last_line = self._started
        self._done = 0
        self._start_line = start_line
        self._logged = -1 if start_line else 0
        self.lines = 0
        """Lines written so far."""

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self._total = total
        self._done = done
        now = self._clock.monotonic()
        share = done / self._total if self._total > 0 else 0.0
        due = (
            share >= self._next_share
            or (now - self._last_line >= self._every and done > 0)
            or (self._start_line and self.lines == 0 and self._total > 0)
        )
        if due and done != self._logged:
            self._line(now)
            while self._next_share <= share:
                self._next_share += 0.1

    def close(self) -> None:
        """The last line (the total reached), unless it was written already."""
        if self._done != self._logged and self._total > 0:
            self._line(self._clock.monotonic())

    def _line(self, now: float) -> None:
        rate = self._done / max(1e-6, now - self._started)
        share = self._done / self._total if self._total > 0 else 1.0
        log.info("%s %d/%d (%.0f%%, %.0f/s)", self._what, self._done, self._total,
                 share * 100, rate)  # fmt: skip
        self._last_line = now
        self._logged = self._done
        self.lines += 1
