"""The pipeline's Kafka topics: names, partitioning and policies, and idempotent creation.

| topic                | key       | partitions | policy                                          |
|----------------------|-----------|------------|-------------------------------------------------|
| `mailbox-events`     | MailboxId | 12         | delete, `retention.ms=-1`: the log is kept      |
| `mailbox-events-dlq` | none      | 1          | delete, 30 days: rejected raw payloads          |
| `mailbox-state`      | MailboxId | as events  | compact: latest folder state per mailbox        |
| `mailbox-registry`   | MailboxId | 24         | compact: which mailboxes to watch               |
| `…-checkpoints`      | see below | 2 x events | delete, 90 days: the projector's checkpoints    |

The events topic keeps everything because replay (state as of a past time, USN or offset) folds the
log from its beginning; operators who accept a bounded replay window set `events_retention_ms`.
The state topic has as many partitions as the events topic so that the projector instance owning
events partition N restores its state from state partition N (same key, same default partitioner).
The registry's partitions are the unit by which the worker group shares the mailboxes
(ingest.mailboxes.assignment): 24 divides evenly among 2, 3, 4, 6, 8, 12 or 24 workers, and with
any other count up to 24 the busiest worker carries at most one partition (~4 % of the mailboxes)
more than another. Like the events topic's, the count must not change once the topic holds data: a
key would move to another partition while its older records stay in the old one.
The checkpoints topic (ingest.state.checkpoints) has two partitions per events partition p: p holds
the small manifests, events partitions + p the chunks of mailbox states they point to, so a reader
lists the checkpoints of p by reading a small partition. Its name defaults to the state topic's
with `-checkpoints`: checkpoints belong to the state (same writer, same transactions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2

from ingest.errors import BrokerError, ConfigError, TopicMissing

log = logging.getLogger(__name__)

EVENTS_PARTITIONS = 12
REGISTRY_PARTITIONS = 24
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000
CHECKPOINTS_RETENTION_MS = 90 * 24 * 3600 * 1000
"""Checkpoints are stamped with the time they were written: each is kept 90 days."""
READY_TIMEOUT_S = 30.0
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
# broker answers that no retry can fix: a bad topic definition
_INVALID_DEFINITION = {37, 38, 40, 41}  # partitions, replication factor, config, invalid request


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topic names; `TopicNames.with_prefix("t-1234-")` for isolated tests or tenants."""

    events: str = "mailbox-events"
    dlq: str = "mailbox-events-dlq"
    state: str = "mailbox-state"
    registry: str = "mailbox-registry"
    checkpoints: str = ""
    """Empty: `checkpoints_topic_of(state)`."""

    def __post_init__(self) -> None:
        if not self.checkpoints:
            object.__setattr__(self, "checkpoints", checkpoints_topic_of(self.state))

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        default = cls()
        return cls(
            events=prefix + default.events,
            dlq=prefix + default.dlq,
            state=prefix + default.state,
            registry=prefix + default.registry,
        )

    def all(self) -> tuple[str, ...]:
        return (self.events, self.dlq, self.state, self.registry, self.checkpoints)


def checkpoints_topic_of(state_topic: str) -> str:
    """The default name of the checkpoints topic of a state topic."""
    return f"{state_topic}-checkpoints"


def checkpoints_spec(
    name: str,
    events_partitions: int,
    replication: int = 1,
    retention_ms: int = CHECKPOINTS_RETENTION_MS,
) -> TopicSpec:
    """Two partitions per events partition (manifests, then chunks; see the module docstring);
    CreateTime: records are stamped when the projector wrote them (retention goes by that)."""
    return TopicSpec(
        name,
        2 * events_partitions,
        replication,
        {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "message.timestamp.type": "CreateTime",
        },
    )


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic must look."""

    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    """Topic-level configs (`cleanup.policy`, `retention.ms`, …), as the broker takes them."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a topic name must not be empty")
        if self.partitions < 1 or self.replication < 1:
            raise ConfigError(
                f"topic {self.name}: partitions and replication must be >= 1, "
                f"got {self.partitions} and {self.replication}"
            )


def default_specs(
    names: TopicNames | None = None,
    *,
    events_partitions: int = EVENTS_PARTITIONS,
    replication: int = 1,
    events_retention_ms: int = -1,
) -> list[TopicSpec]:
    """The pipeline's topics (see the module docstring). `replication` 3 for a real cluster."""
    names = names or TopicNames()
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(
            names.events,
            events_partitions,
            replication,
            {"cleanup.policy": "delete", "retention.ms": str(events_retention_ms)},
        ),
        TopicSpec(
            names.dlq,
            1,
            replication,
            {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS)},
        ),
        TopicSpec(names.state, events_partitions, replication, compact),
        TopicSpec(names.registry, REGISTRY_PARTITIONS, replication, compact),
        checkpoints_spec(names.checkpoints, events_partitions, replication),
    ]


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    request_timeout_ms: int = 30_000,
    **client_kwargs: Any,
) -> list[str]:
    """Create whichever of `specs` do not exist yet, wait until all have leaders, and return the
    names created. Idempotent: an existing topic is left alone (a different partition count is
    logged as a warning, never "fixed"). `client_kwargs` go to the aiokafka admin client as they
    are (security_protocol, ssl_context, sasl_mechanism, sasl_plain_username, …).
    """
    wanted = {spec.name: spec for spec in specs}
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms, **client_kwargs
    )
    try:
        await admin.start()
        existing = await _partition_counts(admin, list(wanted))
        _warn_on_mismatch(wanted, existing)
        missing = [spec for name, spec in wanted.items() if name not in existing]
        created = await _create(admin, missing, request_timeout_ms)
        await _wait_for_leaders(admin, list(wanted), READY_TIMEOUT_S)
        await _wait_until_served(bootstrap, [wanted[name] for name in created], client_kwargs)
    except KafkaError as e:
        raise BrokerError(f"ensuring topics {sorted(wanted)} on {bootstrap}: {e}") from e
    finally:
        await admin.close()
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


async def describe_existing(admin: AIOKafkaAdminClient, names: Sequence[str]) -> list[Any]:
    """The admin client's descriptions of those of `names` that exist. A metadata request that
    names a topic makes a broker with `auto.create.topics.enable` (Kafka's default) create it
    with the broker's defaults, so missing names are found in the topic list and never asked."""
    present = set(await admin.list_topics())
    existing = [name for name in names if name in present]
    return await admin.describe_topics(existing) if existing else []


async def _partition_counts(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, int]:
    """Partition count of each of `names` that exists."""
    counts: dict[str, int] = {}
    for topic in await describe_existing(admin, names):
        if topic["error_code"] == 0:
            counts[topic["topic"]] = len(topic["partitions"])
        elif topic["error_code"] != _UNKNOWN_TOPIC:
            raise for_code(topic["error_code"])(f"describing topic {topic['topic']}")
    return counts


def _warn_on_mismatch(wanted: Mapping[str, TopicSpec], existing: Mapping[str, int]) -> None:
    for name, count in existing.items():
        if count != wanted[name].partitions:
            # repartitioning would move keys between partitions and break per-mailbox order
            log.warning(
                "topic %s exists with %d partitions, not the %d configured; left as it is",
                name,
                count,
                wanted[name].partitions,
            )


async def _create(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], timeout_ms: int
) -> list[str]:
    if not specs:
        return []
    response = await admin.create_topics(
        [
            NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.config))
            for s in specs
        ],
        timeout_ms=timeout_ms,
    )
    created = []
    for result in response.to_object()["topic_errors"]:
        code, name = result["error_code"], result["topic"]
        if code == 0:
            created.append(name)
        elif code == _TOPIC_ALREADY_EXISTS:
            log.debug("topic %s was created concurrently", name)
        else:
            message = result.get("error_message") or for_code(code).__name__
            if code in _INVALID_DEFINITION:
                raise ConfigError(f"topic {name} cannot be created as specified: {message}")
            raise for_code(code)(f"creating topic {name}: {message}")
    return created


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: Sequence[str], within_s: float
) -> None:
    """Creation is acknowledged by the controller; wait until every partition has a leader too,
    so that a producer started right after does not begin with unknown-topic retries."""
    deadline = time.monotonic() + within_s
    while True:
        topics = await admin.describe_topics(list(names))
        pending = [t["topic"] for t in topics if not _has_leaders(t)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics {pending} have no leader after {within_s:.0f} s")
        await asyncio.sleep(0.05)


async def _wait_until_served(
    bootstrap: str, specs: Sequence[TopicSpec], client_kwargs: Mapping[str, Any]
) -> None:
    """A new partition is in the metadata before its leader has created the log, and produce
    requests meanwhile fail with NotLeaderForPartition. Asking every new partition for its end
    offset (aiokafka retries that until the leader answers) waits out that window here, once."""
    if not specs:
        return
    partitions = [TopicPartition(s.name, p) for s in specs for p in range(s.partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(READY_TIMEOUT_S * 1000),
        **client_kwargs,
    )
    await consumer.start()
    try:
        await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


def _has_leaders(topic: Mapping[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return bool(
        topic["error_code"] == 0 and partitions and all(p["leader"] >= 0 for p in partitions)
    )


def key_partition(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) puts a record with this
    key in: murmur2 of the key, sign bit cleared, modulo the count. Readers use it to find a
    mailbox's records (key = MailboxId) without reading the other partitions."""
    return int((murmur2(key) & 0x7FFFFFFF) % partition_count)


def partition_for(mailbox_id: str, partition_count: int) -> int:
    """The partition of a mailbox's records (key = MailboxId, see `key_partition`)."""
    return key_partition(mailbox_id.encode(), partition_count)


class Partitioner:
    """The default partitioner's choice for each key, computed once per key and topic; records
    without a key go round-robin. Fed the topics' partition ids by the producer's metadata."""

    def __init__(self) -> None:
        self._partitions: dict[str, list[int]] = {}
        self._of_key: dict[str, dict[bytes, int]] = {}
        self._spread = 0

    def learn(self, topic: str, partitions: Iterable[int]) -> None:
        self._partitions[topic] = sorted(partitions)
        self._of_key.pop(topic, None)

    def __call__(self, topic: str, key: bytes | None) -> int:
        partitions = self._partitions[topic]
        if key is None:
            self._spread += 1
            return partitions[self._spread % len(partitions)]
        known = self._of_key.setdefault(topic, {})
        found = known.get(key)
        if found is None:
            found = known[key] = partitions[key_partition(key, len(partitions))]
        return found


async def describe_topic(topic: str, **client_kwargs: Any) -> tuple[int, int] | None:
    """(partitions, replication factor) of `topic`, None if it does not exist."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        found = await describe_existing(admin, [topic])
    except KafkaError as e:
        raise BrokerError(f"describing topic {topic}: {type(e).__name__}") from e
    finally:
        await admin.close()
    if not found:
        return None
    (description,) = found
    partitions = description.get("partitions") or []
    if description["error_code"] != 0 or not partitions:
        return None
    return len(partitions), len(partitions[0].get("replicas") or [1])


MISSING_LOG = logging.getLogger(__name__ + ".missing")
"""Where `wait_until_present` says what is missing: rate-limited (ingest.ops.logs), so the line
comes once, then once per period with the count of the repeats it held back."""


async def wait_until_present(
    names: Sequence[str],
    client_kwargs: Mapping[str, Any],
    *,
    on_missing: Callable[[list[str]], None],
    sleep: Callable[[float], Awaitable[None]],
    every: float = 2.0,
) -> None:
    """Return once every topic of `names` exists; meanwhile, at each look, `on_missing(names)`
    and one line naming them and what to do. A topic is only ever created by `ingest topics
    apply` (or the chart's hook Job): a service never creates the topics it expects, since a
    prefix typo would otherwise make a second, empty pipeline."""
    while True:
        missing = [n for n in names if await describe_topic(n, **client_kwargs) is None]
        on_missing(missing)
        if not missing:
            return
        MISSING_LOG.error(
            "Kafka topic(s) %s do not exist: run `ingest topics apply`, or check "
            "KAFKA_TOPIC_PREFIX and the topic names; waiting for them",
            ", ".join(missing),
        )
        await sleep(every)


async def topic_partitions(
    topic: str, client_kwargs: Mapping[str, Any], *, within_s: float = 0.0
) -> list[int]:
    """The partition ids of `topic`, asked of the admin API (a consumer learns the metadata only of
    topics it is assigned, and assigning needs the ids). A topic just created may take a moment to
    show: `within_s` waits that long for it. Raises `TopicMissing` if it does not exist."""
    deadline = time.monotonic() + within_s
    while True:
        described = await describe_topic(topic, **client_kwargs)
        if described is not None:
            return list(range(described[0]))
        if time.monotonic() >= deadline:
            raise TopicMissing(f"topic {topic!r} does not exist")
        await asyncio.sleep(0.1)
