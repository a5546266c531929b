"""Provisioning: the cluster's topics compared with their specs (`ingest.eventlog.topics`), and
the safe part of the difference applied (`ingest topics check|apply`).

`inspect` reads what exists (partitions, replication, the effective value of every config a spec
names, whether a topic has ever held a record); `plan` is the pure comparison; `apply` does what
`plan` marks safe, and nothing while `plan` refuses something. What is safe, and why
(docs/topics.md, "Provisioning"):

| difference | apply |
|---|---|
| topic missing | created with the spec's partitions, replication and configs |
| fewer partitions, topic never written | partitions added |
| fewer partitions, topic holds data | refused: keys would move to other partitions |
| more partitions | refused: Kafka cannot remove partitions |
| other replication factor | refused: a reassignment is an operator's job |
| retention shorter than the spec | set with `fix_configs` (keeps more, deletes nothing) |
| retention longer than the spec | accepted as it is: keeps more than documented, never drift |
| other cleanup.policy, topic never written | set with `fix_configs` |
| other cleanup.policy, topic holds data | refused: compaction or deletion would drop records |

A config the spec does not name (`min.insync.replicas`, …) is the operator's and never compared.
Setting a config keeps the topic's other overrides: AlterConfigs replaces the whole set, so the
current overrides are sent back with it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from ingest.errors import BrokerError
from ingest.eventlog.topics import READY_TIMEOUT_S, TopicSpec, describe_existing, ensure_topics

_UNKNOWN_TOPIC = 3
_DYNAMIC_TOPIC_CONFIG = 1
"""DescribeConfigs `config_source`: set on the topic (not a broker or static default)."""
RETENTION = "retention.ms"
CLEANUP = "cleanup.policy"


class Fix(enum.StrEnum):
    """What `apply` does about a difference; a difference without one is refused."""

    CREATE = "create"
    ADD_PARTITIONS = "add-partitions"
    SET_CONFIG = "set-config"
    """Only with `fix_configs`."""


@dataclass(frozen=True, slots=True)
class TopicState:
    """How one topic is on the cluster."""

    name: str
    partitions: int
    replication: int
    configs: Mapping[str, str]
    """Effective value of every config, whatever set it."""
    overrides: Mapping[str, str]
    """The configs set on the topic itself (what AlterConfigs replaces)."""
    holds_data: bool
    """Some partition's end offset is above 0: a record was written once."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a topic differs from its spec, with what `apply` does about it."""

    topic: str
    item: str
    """`topic` (missing), `partitions`, `replication`, or a config name."""
    wanted: str
    actual: str | None
    """None: the topic does not exist."""
    fix: Fix | None
    """None: refused, the operator decides (`advice` says how)."""
    advice: str
    """One sentence: why, and what to do."""

    def describe(self) -> str:
        if self.actual is None:
            return f"{self.topic}: missing; {self.advice}"
        return f"{self.topic}: {self.item} is {self.actual}, wanted {self.wanted}; {self.advice}"

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "item": self.item,
            "wanted": self.wanted,
            "actual": self.actual,
            "fix": None if self.fix is None else self.fix.value,
            "advice": self.advice,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Every spec with what exists and how it differs."""

    specs: Sequence[TopicSpec]
    states: Mapping[str, TopicState | None]
    differences: Sequence[Difference] = field(default_factory=list)

    @property
    def in_line(self) -> bool:
        return not self.differences

    def of(self, topic: str) -> list[Difference]:
        return [d for d in self.differences if d.topic == topic]

    def to_json(self) -> dict[str, Any]:
        topics = []
        for spec in self.specs:
            state = self.states.get(spec.name)
            topics.append(
                {
                    "name": spec.name,
                    "exists": state is not None,
                    "partitions": None if state is None else state.partitions,
                    "replication": None if state is None else state.replication,
                    "configs": {k: state.configs.get(k) for k in spec.config} if state else {},
                    "holds_data": None if state is None else state.holds_data,
                    "wanted": {
                        "partitions": spec.partitions,
                        "replication": spec.replication,
                        "configs": dict(spec.config),
                    },
                    "differences": [d.to_json() for d in self.of(spec.name)],
                }
            )
        return {"in_line": self.in_line, "topics": topics}


# -- the comparison (pure) -----------------------------------------------------------------------


def plan(specs: Sequence[TopicSpec], states: Mapping[str, TopicState | None]) -> Report:
    """The differences between `specs` and what exists (see the module docstring's table)."""
    differences: list[Difference] = []
    for spec in specs:
        state = states.get(spec.name)
        if state is None:
            differences.append(
                Difference(
                    spec.name,
                    "topic",
                    f"{spec.partitions} partitions, replication {spec.replication}",
                    None,
                    Fix.CREATE,
                    "`ingest topics apply` creates it",
                )
            )
            continue
        differences.extend(_partitions(spec, state))
        differences.extend(_replication(spec, state))
        differences.extend(_configs(spec, state))
    return Report(specs, states, differences)


def _partitions(spec: TopicSpec, state: TopicState) -> list[Difference]:
    if state.partitions == spec.partitions:
        return []

    def diff(fix: Fix | None, advice: str) -> list[Difference]:
        return [
            Difference(
                spec.name, "partitions", str(spec.partitions), str(state.partitions), fix, advice
            )
        ]

    if state.partitions > spec.partitions:
        return diff(
            None,
            "Kafka cannot remove partitions: configure the count the topic has "
            "(--events-partitions, values topics.eventsPartitions)",
        )
    if state.holds_data:
        return diff(
            None,
            "refused: the topic holds data and more partitions would move mailboxes to other "
            "partitions, out of order; configure the count it has, or migrate to a new topic",
        )
    return diff(Fix.ADD_PARTITIONS, "the topic is empty: `ingest topics apply` adds partitions")


def _replication(spec: TopicSpec, state: TopicState) -> list[Difference]:
    if state.replication == spec.replication:
        return []
    return [
        Difference(
            spec.name,
            "replication",
            str(spec.replication),
            str(state.replication),
            None,
            "reassign the partitions (kafka-reassign-partitions.sh) or configure the factor the "
            "topic has (--replication)",
        )
    ]


def _configs(spec: TopicSpec, state: TopicState) -> list[Difference]:
    found = []
    for name, wanted in spec.config.items():
        actual = state.configs.get(name)
        if actual == wanted or (name == RETENTION and _keeps_longer(actual, wanted)):
            continue
        fix: Fix | None = Fix.SET_CONFIG
        advice = "safe to set: `ingest topics apply --fix-configs`"
        if name == CLEANUP and state.holds_data:
            fix = None
            advice = (
                "refused: the topic holds data and another cleanup policy would delete records; "
                "change it by hand (kafka-configs.sh) only if that is meant"
            )
        found.append(Difference(spec.name, name, wanted, actual or "(unset)", fix, advice))
    return found


def _keeps_longer(actual: str | None, wanted: str) -> bool:
    """A retention that keeps at least as long as wanted (-1: forever) is not drift."""
    try:
        have, want = int(actual or ""), int(wanted)
    except ValueError:
        return False
    if have < 0:
        return True
    return want >= 0 and have >= want


# -- reading and changing the cluster ------------------------------------------------------------


async def check(specs: Sequence[TopicSpec], client_kwargs: Mapping[str, Any]) -> Report:
    """The report for `specs` on the cluster `client_kwargs` (aiokafka keyword arguments,
    `bootstrap_servers` included) connects to."""
    return plan(specs, await inspect([s.name for s in specs], client_kwargs))


async def apply(
    specs: Sequence[TopicSpec], client_kwargs: Mapping[str, Any], *, fix_configs: bool = False
) -> tuple[Report, list[Difference]]:
    """Do what is safe (creations, partitions of empty topics, and with `fix_configs` the config
    changes marked safe); (the report after, the differences fixed). All or nothing: with a
    refused difference nothing is changed, since the topics belong together (the state topic
    must have the events topic's partition count, which the operator has to settle first)."""
    done: list[Difference] = []
    # A topic created by someone else a moment ago may not be listed yet: our creation then finds
    # it there, with its own partition count, and the next round plans again from what is there.
    for _ in range(_APPLY_ROUNDS):
        report = await check(specs, client_kwargs)
        if any(d.fix is None for d in report.differences):
            return report, done
        todo = [
            d
            for d in report.differences
            if d.fix is not None and (d.fix is not Fix.SET_CONFIG or fix_configs)
        ]
        if not todo:
            return report, done
        await _fix(specs, client_kwargs, report, todo)
        again = {d.topic for d in todo}
        done = [d for d in done if not (d.fix is Fix.CREATE and d.topic in again)]
        done.extend(todo)
    return await check(specs, client_kwargs), done


_APPLY_ROUNDS = 3


async def _fix(
    specs: Sequence[TopicSpec],
    client_kwargs: Mapping[str, Any],
    before: Report,
    todo: Sequence[Difference],
) -> None:
    by_name = {s.name: s for s in specs}
    kwargs = dict(client_kwargs)
    bootstrap = kwargs.pop("bootstrap_servers")
    creations = [by_name[d.topic] for d in todo if d.fix is Fix.CREATE]
    try:
        if creations:
            await ensure_topics(bootstrap, creations, **kwargs)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kwargs)
        await admin.start()
        try:
            await _add_partitions(admin, by_name, todo)
            await _set_configs(admin, before.states, todo)
        finally:
            await admin.close()
    except KafkaError as e:
        raise BrokerError(f"changing topics on {bootstrap}: {type(e).__name__}: {e}") from e


async def _add_partitions(
    admin: AIOKafkaAdminClient, specs: Mapping[str, TopicSpec], todo: Sequence[Difference]
) -> None:
    grow = {
        d.topic: NewPartitions(specs[d.topic].partitions)
        for d in todo
        if d.fix is Fix.ADD_PARTITIONS
    }
    if not grow:
        return
    await admin.create_partitions(grow)
    # the controller acknowledges before the metadata shows the new partitions with leaders
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        described = await admin.describe_topics(list(grow))
        if all(
            len(t["partitions"]) == grow[t["topic"]].total_count
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"new partitions of {sorted(grow)} not served after {READY_TIMEOUT_S} s"
            )
        await asyncio.sleep(0.05)


async def _set_configs(
    admin: AIOKafkaAdminClient,
    states: Mapping[str, TopicState | None],
    todo: Sequence[Difference],
) -> None:
    changed: dict[str, dict[str, str]] = {}
    for d in todo:
        state = states.get(d.topic)
        if d.fix is Fix.SET_CONFIG and state is not None:
            changed.setdefault(d.topic, dict(state.overrides))[d.item] = d.wanted
    if not changed:
        return
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, configs)
        for topic, configs in changed.items()
    ]
    for response in await admin.alter_configs(resources):
        for code, message, _, name in response.resources:
            if code:
                raise for_code(code)(f"setting configs of {name}: {message}")


async def inspect(
    names: Sequence[str], client_kwargs: Mapping[str, Any]
) -> dict[str, TopicState | None]:
    """The state of each of `names`, None for those that do not exist."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        described = {t["topic"]: t for t in await describe_existing(admin, names)}
        existing = [n for n in names if _exists(described.get(n))]
        configs = await _configs_of(admin, existing)
        counts = {n: len(described[n]["partitions"]) for n in existing}
        written = await _holding_data(counts, client_kwargs)
    except KafkaError as e:
        server = client_kwargs.get("bootstrap_servers")
        raise BrokerError(f"reading topics on {server}: {type(e).__name__}: {e}") from e
    finally:
        await admin.close()
    states: dict[str, TopicState | None] = {n: None for n in names}
    for name in existing:
        partitions = described[name]["partitions"]
        effective, overrides = configs[name]
        states[name] = TopicState(
            name,
            len(partitions),
            len(partitions[0].get("replicas") or []),
            effective,
            overrides,
            name in written,
        )
    return states


def _exists(topic: Mapping[str, Any] | None) -> bool:
    if topic is None or topic["error_code"] == _UNKNOWN_TOPIC:
        return False
    if topic["error_code"] != 0:
        raise for_code(topic["error_code"])(f"describing topic {topic['topic']}")
    return bool(topic["partitions"])


async def _configs_of(
    admin: AIOKafkaAdminClient, names: Sequence[str]
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """topic → (effective configs, the topic's own overrides)."""
    if not names:
        return {}
    found: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise for_code(resource["error_code"])(resource["error_message"])
            entries = resource["config_entries"]
            found[resource["resource_name"]] = (
                {e["config_names"]: e["config_value"] for e in entries},
                {
                    e["config_names"]: e["config_value"]
                    for e in entries
                    if e["config_source"] == _DYNAMIC_TOPIC_CONFIG
                },
            )
    return found


async def _holding_data(counts: Mapping[str, int], client_kwargs: Mapping[str, Any]) -> set[str]:
    """The topics with a partition whose end offset is above 0."""
    if not counts:
        return set()
    partitions = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_kwargs)
    try:
        await consumer.start()
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.topic for tp, end in ends.items() if end > 0}


async def default_replication(client_kwargs: Mapping[str, Any]) -> int:
    """The cluster's `default.replication.factor` (asked of one broker), for specs that do not
    name a factor."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        node = str(cluster["brokers"][0]["node_id"])
        key = "default.replication.factor"
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, node, {key: None})]
        )
    except KafkaError as e:
        server = client_kwargs.get("bootstrap_servers")
        raise BrokerError(f"reading the broker configs on {server}: {type(e).__name__}") from e
    finally:
        await admin.close()
    for resource in response.to_object()["resources"]:
        for entry in resource["config_entries"]:
            if entry["config_names"] == key:
                return int(entry["config_value"])
    return 1
