"""A Kafka outage as the worker reports it: one log line when it starts, a summary every 30 s, one
line when it ends — and, if the in-flight bound filled meanwhile, where the history may be
incomplete (a metric and the reason of the snapshots that repair it). docs/reliability.md."""

from __future__ import annotations

import logging
import time

from ingest.events import RepairReason
from ingest.ops.clock import Clock
from ingest.ops.metrics import (
    WORKER_HISTORY_GAPS,
    WORKER_KAFKA_OUTAGE_SECONDS,
    WORKER_KAFKA_OUTAGES,
)

log = logging.getLogger(__name__)


class Outage:
    """What the sink logs and exports about one Kafka outage: a line when it starts, a summary
    every `summary_every` seconds, a line when it ends (and whether history may have a gap)."""

    def __init__(self, clock: Clock, summary_every: float = 30.0) -> None:
        self._clock = clock
        self._summary_every = summary_every
        self.started: float | None = None
        self._wall_started = 0.0
        self._summarised = 0.0
        self.held_peak = 0
        self.replacements = 0
        self.resent = 0
        self.held_back = False
        """The in-flight window was full: the CometD connect loop stopped during the outage."""

    @property
    def active(self) -> bool:
        return self.started is not None

    def begin(self, why: str, held: int) -> None:
        if self.started is not None:
            return
        now = self._clock.monotonic()
        self.started = self._summarised = now
        self._wall_started = self._clock.wall()
        self.held_peak, self.replacements, self.resent, self.held_back = held, 0, 0, False
        WORKER_KAFKA_OUTAGES.inc()
        log.warning("Kafka outage: %s; holding %d records until it is back", why, held)

    def tick(self, held: int, window_full: bool) -> None:
        if self.started is None:
            return
        now = self._clock.monotonic()
        self.held_peak = max(self.held_peak, held)
        self.held_back = self.held_back or window_full
        WORKER_KAFKA_OUTAGE_SECONDS.set(now - self.started)
        if now - self._summarised >= self._summary_every:
            self._summarised = now
            log.warning(
                "Kafka outage for %.0f s: %d records held (at most %d), producer replaced %d "
                "times%s",
                now - self.started,
                held,
                self.held_peak,
                self.replacements,
                "; CometD receiving paused (in-flight bound full)" if self.held_back else "",
            )

    def end(self) -> bool:
        """Close the outage; True if history may have a gap (the CometD loop was held back)."""
        if self.started is None:
            return False
        lasted = self._clock.monotonic() - self.started
        self.started = None
        WORKER_KAFKA_OUTAGE_SECONDS.set(0)
        log.warning(
            "Kafka back after %.0f s: %d records were held at most, %d re-sent on %d new producers",
            lasted,
            self.held_peak,
            self.resent,
            self.replacements,
        )
        if self.held_back:
            WORKER_HISTORY_GAPS.labels(RepairReason.KAFKA_OUTAGE.value).inc()
            log.warning(
                "history may be incomplete from %s for about %.0f s: CometD receiving was paused "
                "while the in-flight bound was full; the gap repair that follows is published "
                "with reason %s",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_started)),
                lasted,
                RepairReason.KAFKA_OUTAGE.value,
            )
        return self.held_back
