"""`ingest.eventlog.provision.plan`: what `ingest topics apply` may fix and what it refuses."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ingest.eventlog.provision import Fix, TopicState, plan
from ingest.eventlog.topics import TopicNames, TopicSpec, default_specs, describe_existing

SPECS = default_specs(TopicNames(), replication=3)
EVENTS, DLQ, STATE, REGISTRY, CHECKPOINTS = SPECS


def state_of(spec: TopicSpec, **changes: Any) -> TopicState:
    """A topic exactly as `spec` wants it (and holding data), with `changes`."""
    as_specified = TopicState(
        spec.name,
        spec.partitions,
        spec.replication,
        dict(spec.config),
        dict(spec.config),
        holds_data=True,
    )
    return dataclasses.replace(as_specified, **changes)


def as_specified() -> dict[str, TopicState | None]:
    return {s.name: state_of(s) for s in SPECS}


class TestPlan:
    """Each difference with its fix, or refused with advice."""

    def test_in_line(self) -> None:
        report = plan(SPECS, as_specified())
        assert report.in_line and report.differences == []

    def test_missing_topics_are_created(self) -> None:
        states = as_specified() | {DLQ.name: None, REGISTRY.name: None}
        report = plan(SPECS, states)
        assert [(d.topic, d.fix) for d in report.differences] == [
            (DLQ.name, Fix.CREATE),
            (REGISTRY.name, Fix.CREATE),
        ]
        assert "ingest topics apply" in report.differences[0].describe()

    def test_partitions_added_only_to_an_empty_topic(self) -> None:
        empty = plan(
            SPECS, as_specified() | {EVENTS.name: state_of(EVENTS, partitions=6, holds_data=False)}
        )
        assert [(d.item, d.actual, d.wanted, d.fix) for d in empty.differences] == [
            ("partitions", "6", "12", Fix.ADD_PARTITIONS)
        ]
        full = plan(SPECS, as_specified() | {EVENTS.name: state_of(EVENTS, partitions=6)})
        (refused,) = full.differences
        assert refused.fix is None and "holds data" in refused.advice

    @pytest.mark.parametrize("holds_data", [True, False])
    def test_more_partitions_are_refused(self, holds_data: bool) -> None:
        report = plan(
            SPECS,
            as_specified() | {STATE.name: state_of(STATE, partitions=24, holds_data=holds_data)},
        )
        (d,) = report.differences
        assert d.fix is None and "cannot remove partitions" in d.advice
        assert "--events-partitions" in d.advice

    def test_replication_is_reported_never_changed(self) -> None:
        report = plan(SPECS, as_specified() | {REGISTRY.name: state_of(REGISTRY, replication=1)})
        (d,) = report.differences
        assert (d.item, d.actual, d.wanted, d.fix) == ("replication", "1", "3", None)

    def test_shorter_retention_is_a_safe_fix(self) -> None:
        shorter = state_of(
            EVENTS, configs={"cleanup.policy": "delete", "retention.ms": "604800000"}
        )
        (d,) = plan(SPECS, as_specified() | {EVENTS.name: shorter}).differences
        assert (d.item, d.actual, d.wanted, d.fix) == (
            "retention.ms",
            "604800000",
            "-1",
            Fix.SET_CONFIG,
        )
        assert "--fix-configs" in d.advice

    @pytest.mark.parametrize("retention", ["-1", str(90 * 86_400_000)])
    def test_longer_retention_is_not_drift(self, retention: str) -> None:
        longer = state_of(DLQ, configs={"cleanup.policy": "delete", "retention.ms": retention})
        assert plan(SPECS, as_specified() | {DLQ.name: longer}).in_line

    def test_cleanup_policy_change_refused_when_the_topic_holds_data(self) -> None:
        deleting = {"cleanup.policy": "delete"}
        full = plan(SPECS, as_specified() | {STATE.name: state_of(STATE, configs=deleting)})
        (d,) = full.differences
        assert d.fix is None and "delete records" in d.advice
        empty = state_of(STATE, configs=deleting, holds_data=False)
        (d,) = plan(SPECS, as_specified() | {STATE.name: empty}).differences
        assert d.fix is Fix.SET_CONFIG

    def test_configs_the_spec_does_not_name_are_the_operators(self) -> None:
        extra = state_of(EVENTS, configs=dict(EVENTS.config) | {"min.insync.replicas": "2"})
        assert plan(SPECS, as_specified() | {EVENTS.name: extra}).in_line

    def test_json_names_every_topic_and_difference(self) -> None:
        report = plan(SPECS, as_specified() | {DLQ.name: None})
        document = report.to_json()
        assert document["in_line"] is False
        assert [t["name"] for t in document["topics"]] == [s.name for s in SPECS]
        dlq = document["topics"][1]
        assert dlq["exists"] is False
        assert dlq["differences"] == [
            {
                "topic": DLQ.name,
                "item": "topic",
                "wanted": "1 partitions, replication 3",
                "actual": None,
                "fix": "create",
                "advice": "`ingest topics apply` creates it",
            }
        ]


class TestNoAutoCreation:
    """A metadata request never names a topic that may not exist: a broker with
    `auto.create.topics.enable` (Kafka's default) would create it with its own defaults."""

    async def test_missing_names_are_never_described(self) -> None:
        class Admin:
            def __init__(self) -> None:
                self.described: list[list[str]] = []

            async def list_topics(self) -> list[str]:
                return ["mailbox-events", "other"]

            async def describe_topics(self, names: list[str]) -> list[dict[str, object]]:
                self.described.append(names)
                return [{"topic": n, "error_code": 0, "partitions": []} for n in names]

        admin = Admin()
        found = await describe_existing(admin, ["mailbox-events", "mailbox-state"])
        assert [t["topic"] for t in found] == ["mailbox-events"]
        assert await describe_existing(admin, ["nope"]) == []
        assert admin.described == [["mailbox-events"]]
