"""Topic names and specs: the contract every component and the Helm chart rely on."""

from __future__ import annotations

import pytest

from ingest.errors import ConfigError
from ingest.eventlog.topics import (
    CHECKPOINTS_RETENTION_MS,
    DLQ_RETENTION_MS,
    TopicNames,
    TopicSpec,
    default_specs,
)


class TestTopicNames:
    def test_defaults(self) -> None:
        assert TopicNames().all() == (
            "mailbox-events",
            "mailbox-events-dlq",
            "mailbox-state",
            "mailbox-registry",
            "mailbox-state-checkpoints",
        )

    def test_checkpoints_follow_the_state_topic_unless_named(self) -> None:
        assert TopicNames(state="s").checkpoints == "s-checkpoints"
        assert TopicNames(checkpoints="c").checkpoints == "c"

    def test_prefix_applies_to_every_topic(self) -> None:
        names = TopicNames.with_prefix("acme.")
        assert names.all() == tuple(f"acme.{n}" for n in TopicNames().all())


class TestDefaultSpecs:
    """Partitions and policies of the four topics."""

    def specs(self, **kwargs: int) -> dict[str, TopicSpec]:
        return {spec.name: spec for spec in default_specs(TopicNames.with_prefix("p-"), **kwargs)}

    def test_events_are_kept_forever_on_12_partitions(self) -> None:
        events = self.specs()["p-mailbox-events"]
        assert events.partitions == 12
        assert events.config == {"cleanup.policy": "delete", "retention.ms": "-1"}

    def test_dead_letters_are_kept_30_days(self) -> None:
        dlq = self.specs()["p-mailbox-events-dlq"]
        assert DLQ_RETENTION_MS == 2_592_000_000
        assert dlq.config["retention.ms"] == str(DLQ_RETENTION_MS)

    def test_state_is_compacted_and_copartitioned_with_events(self) -> None:
        specs = self.specs(events_partitions=7)
        assert specs["p-mailbox-state"].config == {"cleanup.policy": "compact"}
        assert specs["p-mailbox-state"].partitions == specs["p-mailbox-events"].partitions == 7

    def test_checkpoints_have_two_partitions_per_events_partition(self) -> None:
        spec = self.specs(events_partitions=7)["p-mailbox-state-checkpoints"]
        assert spec.partitions == 14
        assert spec.config == {
            "cleanup.policy": "delete",
            "retention.ms": str(CHECKPOINTS_RETENTION_MS),
            "message.timestamp.type": "CreateTime",
        }

    def test_registry_is_compacted(self) -> None:
        assert self.specs()["p-mailbox-registry"].config == {"cleanup.policy": "compact"}

    def test_replication_and_retention_settings(self) -> None:
        specs = self.specs(replication=3, events_retention_ms=86_400_000)
        assert {s.replication for s in specs.values()} == {3}
        assert specs["p-mailbox-events"].config["retention.ms"] == "86400000"


class TestTopicSpec:
    @pytest.mark.parametrize(("partitions", "replication"), [(0, 1), (1, 0), (-1, 1)])
    def test_counts_must_be_positive(self, partitions: int, replication: int) -> None:
        with pytest.raises(ConfigError, match="must be >= 1"):
            TopicSpec("t", partitions, replication)

    def test_name_must_not_be_empty(self) -> None:
        with pytest.raises(ConfigError, match="empty"):
            TopicSpec("", 1)
