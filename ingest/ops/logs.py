"""Logging setup: JSON lines when stderr is not a terminal (containers), readable text on a TTY;
aiokafka's own lines rate-limited so that an outage cannot flood the log.

While a Kafka broker is unreachable aiokafka logs every failed connection and metadata request, at
ERROR, as often as it retries (a few lines per second once paced, eventlog/clients.py; thousands per
second before). `RepeatLimiter` lets the first line of each kind through (the condition starts),
then at most one per `period` (30 s) carrying the count of the similar lines it held back (the
periodic summary); the line that the pipeline itself logs when the condition ends (the sink's
"Kafka back after …", the projector's "Kafka reachable again") closes it. A kind is the logger,
level and message template (not its arguments: a node id or port must not make lines "new").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable

RATE_LIMITED_LOGGERS = (
    "aiokafka",
    "ingest.eventlog.topics.missing",
    "ingest.eventlog.records.unparsed",
)
"""Logger name prefixes whose repeated lines are limited: aiokafka's, the worker's line about a
missing topic, and its lines about notification fields it could not read (one logger per field
name)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the format log shippers in Kubernetes expect."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class RepeatLimiter(logging.Filter):
    """A handler filter: of the lines of one kind from `prefixes` loggers, the first, then one per
    `period` seconds annotated with how many were suppressed since the last one that passed."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = RATE_LIMITED_LOGGERS,
        period: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._period = period
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}
        """kind → (when a line of it last passed, lines suppressed since)."""
        self.suppressed = 0
        """Lines suppressed so far, in total."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self._period:
            self._kinds[kind] = (last[0], last[1] + 1)
            self.suppressed += 1
            return False
        self._kinds[kind] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} [{last[1]} similar lines in {now - last[0]:.0f} s]"
            record.args = None
        return True

    def held(self) -> int:
        """Lines suppressed since their kind last passed (what a summary has yet to mention)."""
        return sum(count for _, count in self._kinds.values())


LIMITER = RepeatLimiter()
"""The process's limiter, on the handler `configure_logging` installs."""


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger once; `CUMI_LOG_FORMAT=json|text` overrides the TTY guess."""
    fmt = os.environ.get("CUMI_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(LIMITER)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every group rebalance step
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
