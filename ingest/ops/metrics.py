"""Prometheus metric definitions: the worker's, the projector's and the KPI consumer's, each in
its own registry.

Conventions: names `cumi_<process>_*`, base units (seconds, bytes), counters end in `_total`,
latency histograms in `_seconds`. Labels are closed sets (event type, reason, state, endpoint,
status) — never a mailbox or message id, which would make the series count grow with the data.
Each metric is documented in docs/metrics.md.

Two dedicated registries (not the global default): each process serves only its own at `/metrics`
(`WORKER_REGISTRY` in `ingest worker`, `PROJECTOR_REGISTRY` in `ingest projector`), plus the
process and platform collectors, so neither shows the other's metrics as zeros. Keeping clear of
the default registry also spares the test process duplicate-registration errors.

Labelled counters are created at 0 for every known label value at import, because a series born
at its first increment hides that increment from `increase()` and `rate()`. The closed sets are
the domain enums of `ingest.events` and the tuples below; the two that belong to the CUMI client
(`LossReason` of the CometD session, `Endpoint` of the REST client) are initialised by their own
modules with `init_label_values`, so that this module imports nothing above the domain.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from ingest.events import LENIENT_FIELDS, EventType, Outcome, RejectReason, RepairReason


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


WORKER_REGISTRY = _registry()
PROJECTOR_REGISTRY = _registry()
KPIS_REGISTRY = _registry()
"""`ingest kpis`: these process metrics; its `cumi_voicemail_*` families come from a collector of
its own (ingest.kpis.exposition), registered per consumer."""

# Broker acks take ~1-50 ms; EventTime has one-second resolution, so its lag buckets start coarser.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
_REST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# ---------------------------------------------------------------------------------------------
# WORKER — ingest.worker and its parts (comet, subscriptions, cumi_rest, reconcile, sink)
# ---------------------------------------------------------------------------------------------

WORKER_EVENTS_RECEIVED = Counter(
    "cumi_worker_events_received_total",
    "Comet event messages received from the CometD session (before validation).",
    registry=WORKER_REGISTRY,
)
WORKER_EVENTS_PUBLISHED = Counter(
    "cumi_worker_events_published_total",
    "Mailbox events acknowledged by Kafka on the events topic, by EventType.",
    ["event_type"],
    registry=WORKER_REGISTRY,
)
WORKER_EVENTS_DEAD_LETTERED = Counter(
    "cumi_worker_events_dead_lettered_total",
    "Payloads that could not become a MailboxEvent, acknowledged on the dead-letter topic.",
    ["reason"],
    registry=WORKER_REGISTRY,
)
WORKER_FIELDS_UNPARSED = Counter(
    "cumi_worker_fields_unparsed_total",
    "Fields of accepted notifications the worker could not read (published null, the raw text "
    "kept in the event's unparsed list), by field.",
    ["field"],
    registry=WORKER_REGISTRY,
)
WORKER_DEAD_LETTER_REPAIRS = Counter(
    "cumi_worker_dead_letter_repairs_total",
    "Dead letters by the gap repair they caused: triggered (the mailbox they name is repaired), "
    "deferred (one repair follows at the end of the mailbox's rate-limit interval), unwatched "
    "(they name no mailbox this worker watches).",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
WORKER_SNAPSHOTS_PUBLISHED = Counter(
    "cumi_worker_snapshots_published_total",
    "Mailbox snapshot records acknowledged by Kafka, by why gap repair ran.",
    ["reason"],
    registry=WORKER_REGISTRY,
)
WORKER_ACK_LATENCY = Histogram(
    "cumi_worker_ack_latency_seconds",
    "Time from receiving an event from CometD to Kafka acknowledging it.",
    buckets=_ACK_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_EVENT_LAG = Histogram(
    "cumi_worker_event_lag_seconds",
    "Time from the event's EventTime (server clock, 1 s resolution) to Kafka acknowledging it.",
    buckets=_LAG_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_LAST_EVENT = Gauge(
    "cumi_worker_last_event_timestamp_seconds",
    "Unix time of the last event acknowledged by Kafka.",
    registry=WORKER_REGISTRY,
)
WORKER_QUEUE_EVENTS = Gauge(
    "cumi_worker_queue_events",
    "Events received but not yet acknowledged by Kafka (the in-flight bound is CUMI_QUEUE_SIZE).",
    registry=WORKER_REGISTRY,
)
WORKER_QUEUE_CAPACITY = Gauge(
    "cumi_worker_queue_capacity",
    "The in-flight bound CUMI_QUEUE_SIZE; at this fill the worker stops pulling from CometD.",
    registry=WORKER_REGISTRY,
)
WORKER_BACKPRESSURE_SECONDS = Counter(
    "cumi_worker_backpressure_seconds_total",
    "Time the CometD receive path spent blocked because the in-flight queue was full.",
    registry=WORKER_REGISTRY,
)
WORKER_PRODUCER_ERRORS = Counter(
    "cumi_worker_producer_errors_total",
    "Kafka send trouble, by kind (replaced: the producer was replaced; resent: records sent again "
    "on the new one; fatal: gave up, worker unhealthy).",
    ["kind"],
    registry=WORKER_REGISTRY,
)
WORKER_KAFKA_OUTAGE_SECONDS = Gauge(
    "cumi_worker_kafka_outage_seconds",
    "How long the current Kafka outage has lasted (0: none): records wait and nothing is "
    "acknowledged.",
    registry=WORKER_REGISTRY,
)
WORKER_KAFKA_OUTAGES = Counter(
    "cumi_worker_kafka_outages_total",
    "Kafka outages the worker rode out (or is riding out).",
    registry=WORKER_REGISTRY,
)
WORKER_HISTORY_GAPS = Counter(
    "cumi_worker_history_gaps_total",
    "Times the event history may have a gap, by cause; gap repair snapshots with that reason "
    "close it.",
    ["reason"],
    registry=WORKER_REGISTRY,
)
WORKER_SUBSCRIPTIONS = Gauge(
    "cumi_worker_subscriptions",
    "Mailboxes by subscription state (pending, requesting, subscribing, active, failed, backoff).",
    ["state"],
    registry=WORKER_REGISTRY,
)
WORKER_AUTH_FAILURES = Counter(
    "cumi_worker_auth_failures_total",
    "Mailboxes whose credentials were missing or refused (HTTP 401/403); retried much later.",
    registry=WORKER_REGISTRY,
)
WORKER_HANDSHAKES = Counter(
    "cumi_worker_handshakes_total",
    "CometD handshakes, by outcome (success, failure).",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
WORKER_SESSION_RESTARTS = Counter(
    "cumi_worker_session_restarts_total",
    "CometD sessions torn down and rebuilt, by reason (unknown-client, handshake-advice, "
    "subscribe-failed, stall, transport).",
    ["reason"],
    registry=WORKER_REGISTRY,
)
WORKER_STALLS = Counter(
    "cumi_worker_stalls_total",
    "Times the watchdog found no successful /meta/connect for CUMI_STALL_TIMEOUT_SECONDS.",
    registry=WORKER_REGISTRY,
)
WORKER_CONNECT_FAILURES = Counter(
    "cumi_worker_connect_failures_total",
    "Failed /meta/connect exchanges (network error or unsuccessful reply).",
    registry=WORKER_REGISTRY,
)
WORKER_LAST_CONNECT = Gauge(
    "cumi_worker_last_connect_timestamp_seconds",
    "Unix time of the last successful /meta/connect reply.",
    registry=WORKER_REGISTRY,
)
WORKER_SUBSCRIBE_SECONDS = Histogram(
    "cumi_worker_subscribe_all_seconds",
    "Time to bring every pending mailbox of a session to active (requestnotification + subscribe).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=WORKER_REGISTRY,
)
WORKER_REST_REQUESTS = Counter(
    "cumi_worker_rest_requests_total",
    "CUMI REST requests, by endpoint and HTTP status (or 'error' for network failures/timeouts).",
    ["endpoint", "status"],
    registry=WORKER_REGISTRY,
)
WORKER_REST_DURATION = Histogram(
    "cumi_worker_rest_request_duration_seconds",
    "CUMI REST request duration (one attempt, excluding the wait for a concurrency slot).",
    ["endpoint"],
    buckets=_REST_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_REST_RETRIES = Counter(
    "cumi_worker_rest_retries_total",
    "CUMI REST attempts retried after a transient failure, by endpoint.",
    ["endpoint"],
    registry=WORKER_REGISTRY,
)
WORKER_RECONCILE_RUNS = Counter(
    "cumi_worker_reconcile_runs_total",
    "Gap-repair runs for one mailbox, by reason and outcome (success, failure).",
    ["reason", "outcome"],
    registry=WORKER_REGISTRY,
)
WORKER_RECONCILE_PENDING = Gauge(
    "cumi_worker_reconcile_pending",
    "Mailboxes waiting for gap repair.",
    registry=WORKER_REGISTRY,
)
WORKER_REGISTRY_PARTITIONS = Gauge(
    "cumi_worker_registry_partitions",
    "Registry partitions the worker group has assigned to this worker (registry source).",
    registry=WORKER_REGISTRY,
)
WORKER_REGISTRY_MAILBOXES = Gauge(
    "cumi_worker_registry_mailboxes",
    "Mailboxes this worker watches because its registry partitions list them (registry source).",
    registry=WORKER_REGISTRY,
)
WORKER_REBALANCES = Counter(
    "cumi_worker_rebalances_total",
    "Registry partition assignments received from the worker group.",
    registry=WORKER_REGISTRY,
)
WORKER_ASSIGNMENT_LOAD_SECONDS = Histogram(
    "cumi_worker_assignment_load_seconds",
    "Newly assigned registry partitions read to their end, from the assignment on.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=WORKER_REGISTRY,
)
WORKER_REGISTRY_SKIPPED = Counter(
    "cumi_worker_registry_records_skipped_total",
    "Registry records ignored, by reason (undecodable, key_mismatch, other_server).",
    ["reason"],
    registry=WORKER_REGISTRY,
)
WORKER_READY = Gauge(
    "cumi_worker_ready",
    "1 when the worker is ready: CometD session up, mailboxes subscribed, Kafka producer up.",
    registry=WORKER_REGISTRY,
)

# ---------------------------------------------------------------------------------------------
# PROJECTOR — ingest.projector, ingest.state.store, ingest.state.replay
# `partition` is an events-topic partition number: bounded by the topic's partition count.
# ---------------------------------------------------------------------------------------------

PROJECTOR_EVENTS = Counter(
    "cumi_projector_events_total",
    "Events folded into the state, by EventType and outcome (applied, duplicate, stale).",
    ["event_type", "outcome"],
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_SNAPSHOTS = Counter(
    "cumi_projector_snapshots_total",
    "Snapshot records folded into the state, by outcome (applied, duplicate, stale).",
    ["outcome"],
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_SKIPPED = Counter(
    "cumi_projector_records_skipped_total",
    "Records of the events topic that could not be applied (undecodable, unexpected_kind).",
    ["reason"],
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_LAG = Gauge(
    "cumi_projector_consumer_lag",
    "Records of an owned events partition not yet applied (high-water mark minus position).",
    ["partition"],
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_TRANSACTIONS = Counter(
    "cumi_projector_transactions_total",
    "State transactions (state records + consumer offsets), by outcome (committed, aborted).",
    ["outcome"],
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_TRANSACTION_SECONDS = Histogram(
    "cumi_projector_transaction_seconds",
    "Time to write one partition's changed states and commit them with its offset.",
    buckets=_ACK_BUCKETS,
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_STATES_WRITTEN = Counter(
    "cumi_projector_state_records_written_total",
    "Mailbox state records written to the state topic in committed transactions.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_CHECKPOINTS = Counter(
    "cumi_projector_checkpoints_total",
    "Checkpoints of a partition's state committed to the checkpoints topic.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_CHECKPOINT_BYTES = Counter(
    "cumi_projector_checkpoint_bytes_total",
    "Bytes of mailbox states in committed checkpoints.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_CHECKPOINT_SECONDS = Histogram(
    "cumi_projector_checkpoint_seconds",
    "Time to encode one partition's checkpoint (every mailbox state), before its transaction.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_MAILBOXES = Gauge(
    "cumi_projector_mailboxes",
    "Mailboxes in this instance's state (of the partitions it owns).",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_PARTITIONS = Gauge(
    "cumi_projector_partitions_assigned",
    "Events partitions this instance owns.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_CATCHING_UP = Gauge(
    "cumi_projector_partitions_catching_up",
    "Owned events partitions being folded in a catch-up worker process (far behind the log).",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_REBALANCES = Counter(
    "cumi_projector_rebalances_total",
    "Partition assignments received from the consumer group.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_RESTORE_SECONDS = Histogram(
    "cumi_projector_restore_seconds",
    "Time to restore newly assigned partitions from the state topic (fencing included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_RESTORED = Counter(
    "cumi_projector_restored_mailboxes_total",
    "Mailbox states read back from the state topic on assignment.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_READY = Gauge(
    "cumi_projector_ready",
    "1 when the projector has restored its partitions and is consuming.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_REPLAY_RECORDS = Counter(
    "cumi_projector_replay_records_total",
    "Records read by replays (ingest replay, replay()) in this process.",
    registry=PROJECTOR_REGISTRY,
)
PROJECTOR_REPLAY_PROGRESS = Gauge(
    "cumi_projector_replay_progress_ratio",
    "Share (0..1) of the records to read that the running or last replay has read.",
    registry=PROJECTOR_REGISTRY,
)

# ---------------------------------------------------------------------------------------------
# KPIS — ingest.kpis (the KPI consumer's own health; the KPIs are cumi_voicemail_*)
# ---------------------------------------------------------------------------------------------

KPIS_RECORDS = Counter(
    "cumi_kpis_records_total",
    "Records of the events topic folded by the KPI consumer, by outcome (applied, duplicate, "
    "stale); counted again from offset 0 after a restart (the rebuild).",
    ["outcome"],
    registry=KPIS_REGISTRY,
)
KPIS_SKIPPED = Counter(
    "cumi_kpis_records_skipped_total",
    "Records of the events topic the KPI consumer could not fold (undecodable, unexpected_kind).",
    ["reason"],
    registry=KPIS_REGISTRY,
)
KPIS_LAG = Gauge(
    "cumi_kpis_consumer_lag",
    "Records of an events partition the KPI consumer has not folded yet.",
    ["partition"],
    registry=KPIS_REGISTRY,
)
KPIS_READY = Gauge(
    "cumi_kpis_ready",
    "1 once the KPI consumer has folded the log as it was at start: cumi_voicemail_* are served.",
    registry=KPIS_REGISTRY,
)
KPIS_REBUILD_SECONDS = Gauge(
    "cumi_kpis_rebuild_seconds",
    "Time the start-up rebuild took (folding the events topic from offset 0 to its end at start).",
    registry=KPIS_REGISTRY,
)
KPIS_EVALUATION_SECONDS = Histogram(
    "cumi_kpis_evaluation_seconds",
    "Time to compute the cumi_voicemail_* families for one scrape (the gauges walk every mailbox).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=KPIS_REGISTRY,
)

# ---------------------------------------------------------------------------------------------
# LABEL VALUES — every known value of a labelled counter exists at 0 from the first scrape:
# `increase()` cannot see the increment that creates a series. The literal sets are the values
# the call sites use (docs/metrics.md, "Label values"). Not here: the REST `status` (any HTTP
# code), histograms (a quantile of nothing is nothing) and gauges (set when known).
# ---------------------------------------------------------------------------------------------

PRODUCER_ERROR_KINDS = ("replaced", "resent", "fatal", "unacknowledged-at-shutdown")
HISTORY_GAP_REASONS = (RepairReason.KAFKA_OUTAGE.value,)
HANDSHAKE_OUTCOMES = ("success", "failure")
REGISTRY_SKIP_REASONS = ("undecodable", "key_mismatch", "other_server")
RECONCILE_OUTCOMES = ("success", "failure")
DEAD_LETTER_REPAIR_OUTCOMES = ("triggered", "deferred", "unwatched")
PROJECTOR_SKIP_REASONS = ("undecodable", "unexpected_kind")
TRANSACTION_OUTCOMES = ("committed", "aborted")


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """`count` observations of one value at the cost of one (prometheus-client has no bulk call;
    this does what `Histogram.observe` does, `count` times at once). Uses the histogram's private
    `_sum`, `_buckets`, `_upper_bounds` (prometheus-client pinned; docs/design.md §7)."""
    histogram._sum.inc(value * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if value <= bound:
            histogram._buckets[i].inc(count)
            break


def init_label_values(counter: Counter, *values: Iterable[str]) -> None:
    """Create `counter`'s series for every combination of `values` (one iterable per label
    name, in order), at 0: `.labels()` without an increment."""
    for combination in itertools.product(*values):
        counter.labels(*combination)


init_label_values(WORKER_EVENTS_PUBLISHED, EventType)
init_label_values(WORKER_EVENTS_DEAD_LETTERED, RejectReason)
init_label_values(WORKER_FIELDS_UNPARSED, LENIENT_FIELDS)
init_label_values(WORKER_DEAD_LETTER_REPAIRS, DEAD_LETTER_REPAIR_OUTCOMES)
init_label_values(WORKER_PRODUCER_ERRORS, PRODUCER_ERROR_KINDS)
init_label_values(WORKER_HISTORY_GAPS, HISTORY_GAP_REASONS)
init_label_values(WORKER_HANDSHAKES, HANDSHAKE_OUTCOMES)
init_label_values(WORKER_REGISTRY_SKIPPED, REGISTRY_SKIP_REASONS)
init_label_values(WORKER_SNAPSHOTS_PUBLISHED, RepairReason)
init_label_values(WORKER_RECONCILE_RUNS, RepairReason, RECONCILE_OUTCOMES)
init_label_values(PROJECTOR_EVENTS, EventType, Outcome)
init_label_values(PROJECTOR_SNAPSHOTS, Outcome)
init_label_values(PROJECTOR_SKIPPED, PROJECTOR_SKIP_REASONS)
init_label_values(PROJECTOR_TRANSACTIONS, TRANSACTION_OUTCOMES)
init_label_values(KPIS_RECORDS, Outcome)
init_label_values(KPIS_SKIPPED, PROJECTOR_SKIP_REASONS)
