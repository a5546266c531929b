"""The `cumi_voicemail_*` metric families of a `KpiLedger`, built at each scrape.

A custom collector rather than prometheus-client Counters: the ledger owns the numbers (counted
once per message, rebuilt from the log at start), and the gauges are computed from folder state at
the scrape, "now" being the scrape time. Nothing is exported until the ledger has caught up with
the log as it was at start: a scrape during the rebuild would see the counters below their last
value, which Prometheus takes for a counter reset (and `increase()` would count history twice).
Every label value of a closed set is exported from the first scrape on, at 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ingest.kpis.ledger import (
    FIRST_SEEN_SOURCES,
    PRIORITIES,
    Histogram,
    KpiLedger,
    duration_label,
)
from ingest.ops.metrics import KPIS_EVALUATION_SECONDS

FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name (as queried) → (type, help, label names); docs/metrics.md lists the same
    "cumi_voicemail_messages_received_total": (
        "counter",
        "Messages first seen by a NEW_MESSAGE event (once per message), by MsgType and Priority.",
        ("msg_type", "priority"),
    ),
    "cumi_voicemail_messages_first_seen_total": (
        "counter",
        "Messages first seen otherwise than by NEW_MESSAGE (a gap-repair snapshot listing, or a "
        "Notifier latest-status event after downtime): arrival unknown to the log.",
        ("source",),
    ),
    "cumi_voicemail_time_to_first_listen_seconds": (
        "histogram",
        "First listen (the first event asserting the message read) minus arrival, once per "
        "message of known arrival.",
        ("priority",),
    ),
    "cumi_voicemail_first_listen_unknown_total": (
        "counter",
        "Messages heard whose time to first listen is unknown (arrival unknown, or read while no "
        "one listened: first seen read in a snapshot).",
        ("priority",),
    ),
    "cumi_voicemail_deleted_unheard_total": (
        "counter",
        "Messages that left the Inbox (to Deleted or hard-deleted) never heard, once per message.",
        ("priority",),
    ),
    "cumi_voicemail_unread_messages": (
        "gauge",
        "Messages in an Inbox and unread, per the fold, now.",
        (),
    ),
    "cumi_voicemail_oldest_unread_age_seconds": (
        "gaugehistogram",
        "Per mailbox with unread Inbox messages all of known arrival: the age of its oldest "
        "unread message, now.",
        (),
    ),
    "cumi_voicemail_unread_unknown_age_mailboxes": (
        "gauge",
        "Mailboxes with unread Inbox messages whose oldest unread cannot be dated (one of them "
        "has an unknown arrival).",
        (),
    ),
    "cumi_voicemail_mailboxes_with_urgent_unread": (
        "gauge",
        "Mailboxes with an urgent unread Inbox message of known arrival older than the threshold.",
        ("older_than",),
    ),
}


class KpiCollector(Collector):
    """Exports `ledger()` once `ready()`; `now()` is the evaluation time in epoch seconds."""

    def __init__(
        self,
        ledger: Callable[[], KpiLedger],
        ready: Callable[[], bool],
        now: Callable[[], float],
    ) -> None:
        self._ledger = ledger
        self._ready = ready
        self._now = now

    def describe(self) -> Iterator[Metric]:
        return iter(families(KpiLedger(), 0.0))

    def collect(self) -> Iterator[Metric]:
        if not self._ready():
            return iter(())
        started = time.monotonic()
        found = families(self._ledger(), self._now())
        KPIS_EVALUATION_SECONDS.observe(time.monotonic() - started)
        return iter(found)


def families(ledger: KpiLedger, now: float) -> list[Metric]:
    """Every `cumi_voicemail_*` family of `ledger` evaluated at `now`."""
    received = CounterMetricFamily(**_spec("cumi_voicemail_messages_received_total"))
    for (msg_type, priority), count in sorted(ledger.received.items()):
        received.add_metric([msg_type, priority], count)
    first_seen = CounterMetricFamily(**_spec("cumi_voicemail_messages_first_seen_total"))
    for source in FIRST_SEEN_SOURCES:
        first_seen.add_metric([source], ledger.first_seen[source])
    listen = HistogramMetricFamily(**_spec("cumi_voicemail_time_to_first_listen_seconds"))
    unknown = CounterMetricFamily(**_spec("cumi_voicemail_first_listen_unknown_total"))
    deleted = CounterMetricFamily(**_spec("cumi_voicemail_deleted_unheard_total"))
    for priority in PRIORITIES:
        histogram = ledger.time_to_first_listen[priority]
        listen.add_metric([priority], _buckets(histogram), histogram.total)
        unknown.add_metric([priority], ledger.first_listen_unknown[priority])
        deleted.add_metric([priority], ledger.deleted_unheard[priority])
    gauges = ledger.gauges(now)
    unread = GaugeMetricFamily(**_spec("cumi_voicemail_unread_messages"))
    unread.add_metric([], gauges.unread_messages)
    ages = GaugeHistogramMetricFamily(**_spec("cumi_voicemail_oldest_unread_age_seconds"))
    ages.add_metric([], _buckets(gauges.oldest_unread_age), gauges.oldest_unread_age.total)
    blind = GaugeMetricFamily(**_spec("cumi_voicemail_unread_unknown_age_mailboxes"))
    blind.add_metric([], gauges.unknown_age_mailboxes)
    urgent = GaugeMetricFamily(**_spec("cumi_voicemail_mailboxes_with_urgent_unread"))
    for threshold, count in gauges.urgent_unread.items():
        urgent.add_metric([duration_label(threshold)], count)
    return [received, first_seen, listen, unknown, deleted, unread, ages, blind, urgent]


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """`le` spelled as prometheus-client spells it ("60.0", "+Inf")."""
    return [
        ("+Inf" if bound == float("inf") else repr(float(bound)), count)
        for bound, count in histogram.cumulative()
    ]


def _spec(name: str) -> dict[str, Any]:
    """A family's name, help and label names; a counter's family is named without `_total`."""
    _, help_text, labels = FAMILIES[name]
    return {"name": name.removesuffix("_total"), "documentation": help_text, "labels": labels}
