"""The mailbox registry without a broker: record codec, import formats, diffs, the settings of the
registry source, credentials references, and `ingest mailboxes` argument handling."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ingest.cumi.credentials import FileCredentials
from ingest.cumi.normalizer import parse_event
from ingest.errors import ConfigError, DecodeError
from ingest.eventlog import codec
from ingest.eventlog.topics import REGISTRY_PARTITIONS, TopicNames, default_specs
from ingest.events import MailboxEvent, MailboxRegistryEntry, RecordKind
from ingest.mailboxes.assignment import CredentialRefs
from ingest.mailboxes.mailbox_file import parse_mailbox_file
from ingest.mailboxes.registry import changes, decode_entry, watchable
from ingest.settings import MailboxSource, Settings

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)


def entry(alias: str = "abell", **fields: object) -> MailboxRegistryEntry:
    return MailboxRegistryEntry(alias, T0, **fields)  # type: ignore[arg-type]


class TestRecords:
    """Registry entries on the wire: Avro single-object encoding, keyed by MailboxId."""

    def test_round_trip_with_headers_and_timestamp(self) -> None:
        record = entry(server="cuc1", credentials_ref="team-a", enabled=False)
        data = codec.encode(record)
        assert data[:2] == b"\xc3\x01"
        assert decode_entry(b"abell", data) == record
        headers = dict(codec.kafka_headers(record))
        assert headers["cumi.kind"] == RecordKind.REGISTRY.value.encode()
        assert codec.timestamp_ms(record) == int(T0.timestamp() * 1000)

    def test_tombstone_is_none(self) -> None:
        assert decode_entry(b"abell", None) is None

    def test_key_must_name_the_same_mailbox(self) -> None:
        with pytest.raises(DecodeError, match="names mailbox 'abell'"):
            decode_entry(b"bwayne", codec.encode(entry()))

    def test_other_records_and_garbage_are_refused(self) -> None:
        with pytest.raises(DecodeError, match="C3 01"):
            decode_entry(b"abell", b'{"server": "cuc1"}')
        with pytest.raises(DecodeError, match="without a key"):
            decode_entry(None, codec.encode(entry()))

    def test_an_event_is_not_an_entry(self, vendor_event: MailboxEvent) -> None:
        with pytest.raises(DecodeError, match="MailboxEvent is not a registry entry"):
            decode_entry(b"abell", codec.encode(vendor_event))


@pytest.fixture
def vendor_event() -> MailboxEvent:
    return parse_event(
        {
            "MessageInfo": [{"MessageId": "72204bd7", "ReceiveTime": "04:15:40 PM 10/30/2008"}],
            "USN": 2265,
            "EventTime": "11:15:40 PM 10/30/2008",
            "SubscriptionId": "00bdcfd3",
            "MailboxId": "abell",
            "EventType": "SAVED_MESSAGE",
        }
    )


class TestWatchable:
    """Which entries a worker of a given server watches."""

    @pytest.mark.parametrize(
        ("record", "server", "expected"),
        [
            (entry(), "cuc1", True),
            (entry(server="cuc1"), "cuc1", True),
            (entry(server="cuc2"), "cuc1", False),
            (entry(server="cuc2"), None, True),
            (entry(server="cuc1", enabled=False), "cuc1", False),
            (None, "cuc1", False),
        ],
    )
    def test_rule(
        self, record: MailboxRegistryEntry | None, server: str | None, expected: bool
    ) -> None:
        assert watchable(record, server) is expected


class TestImportFormats:
    """`ingest mailboxes import FILE`: the mailbox-file formats, and entry fields from JSON."""

    def test_lines_with_comments(self, tmp_path: Path) -> None:
        path = tmp_path / "m.txt"
        path.write_text("# staff\nabell\n\nbwayne  # the other one\nabell\n")
        parsed = parse_mailbox_file(path, server="cuc1", credentials_ref=None)
        assert list(parsed) == ["abell", "bwayne"]
        assert {e.server for e in parsed.values()} == {"cuc1"}

    def test_json_array(self, tmp_path: Path) -> None:
        path = tmp_path / "m.json"
        path.write_text(json.dumps(["abell", " bwayne "]))
        assert list(parse_mailbox_file(path, server=None, credentials_ref="r")) == [
            "abell",
            "bwayne",
        ]

    def test_json_object_sets_fields_and_ignores_secrets(self, tmp_path: Path) -> None:
        path = tmp_path / "users.json"
        path.write_text(
            json.dumps(
                {
                    "abell": {"password": "s3cret"},
                    "bwayne": {"server": "cuc2", "credentials_ref": "shared", "enabled": False},
                }
            )
        )
        parsed = parse_mailbox_file(path, server="cuc1", credentials_ref=None)
        assert parsed["abell"] == MailboxRegistryEntry(
            "abell", parsed["abell"].updated_at, server="cuc1"
        )
        bwayne = parsed["bwayne"]
        assert (bwayne.server, bwayne.credentials_ref, bwayne.enabled) == ("cuc2", "shared", False)
        assert "s3cret" not in repr(parsed)

    def test_json_lines_as_list_prints_them(self, tmp_path: Path) -> None:
        path = tmp_path / "registry.jsonl"
        rows = [
            {"mailbox_id": "abell", "server": "cuc1", "credentials_ref": None, "enabled": True},
            {"mailbox_id": "bwayne", "server": None, "credentials_ref": "r", "enabled": False},
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        parsed = parse_mailbox_file(path, server="other", credentials_ref=None)
        assert [
            (e.mailbox_id, e.server, e.credentials_ref, e.enabled) for e in parsed.values()
        ] == [
            ("abell", "cuc1", None, True),
            ("bwayne", None, "r", False),
        ]

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            ('{"abell": {"enabled": "yes"}}', "enabled must be true or false"),
            ('{"abell": {"server": 7}}', "server must be a string or null"),
            ('[""]', "non-empty strings"),
            ('"abell"', "JSON array or object"),
            ("[abell", "not valid JSON"),
            ('{"mailbox_id": "a"}\n{"server": "b"}\n', "objects with a mailbox_id"),
        ],
    )
    def test_bad_json(self, tmp_path: Path, content: str, error: str) -> None:
        path = tmp_path / "m.json"
        path.write_text(content)
        with pytest.raises(ConfigError, match=error):
            parse_mailbox_file(path, server=None, credentials_ref=None)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            parse_mailbox_file(tmp_path / "nope", server=None, credentials_ref=None)


class TestChanges:
    """`import` writes only what differs, and with --prune removes what the file omits."""

    def test_only_new_or_changed_entries_are_written(self) -> None:
        later = T0 + dt.timedelta(hours=1)
        current = {"abell": entry(), "bwayne": entry("bwayne"), "cdoe": entry("cdoe")}
        wanted = {
            "abell": MailboxRegistryEntry("abell", later),  # same but for the time: unchanged
            "bwayne": MailboxRegistryEntry("bwayne", later, enabled=False),
            "dnew": MailboxRegistryEntry("dnew", later),
        }
        puts, removes = changes(current, wanted)
        assert [e.mailbox_id for e in puts] == ["bwayne", "dnew"]
        assert removes == []
        assert changes(current, wanted, prune=True)[1] == ["cdoe"]


class TestSettings:
    """CUMI_MAILBOX_SOURCE and the worker group settings."""

    @pytest.fixture
    def env(self, tmp_path: Path) -> dict[str, str]:
        users = tmp_path / "users.json"
        users.write_text("{}")
        return {
            "CUMI_SERVER_URL": "https://cuc.example.com",
            "CUMI_CREDENTIALS_FILE": str(users),
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        }

    def test_registry_source_needs_no_mailbox_file(self, env: dict[str, str]) -> None:
        settings = Settings.load({**env, "CUMI_MAILBOX_SOURCE": "registry"})
        assert settings.cumi.mailbox_source is MailboxSource.REGISTRY
        assert settings.cumi.mailboxes_file is None
        assert settings.worker.group_id == "cumi-ingest-workers"
        assert settings.worker.group_session_timeout_ms == 10_000
        assert settings.worker.group_heartbeat_interval_ms == 1_000

    def test_file_source_still_needs_it(self, env: dict[str, str]) -> None:
        with pytest.raises(ConfigError, match="CUMI_MAILBOXES_FILE is required"):
            Settings.load(env)

    def test_group_settings(self, env: dict[str, str]) -> None:
        settings = Settings.load(
            {
                **env,
                "CUMI_MAILBOX_SOURCE": "registry",
                "KAFKA_WORKER_GROUP": "cuc1-workers",
                "KAFKA_WORKER_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "2000",
            }
        )
        assert settings.worker.group_id == "cuc1-workers"
        assert settings.worker.group_session_timeout_ms == 6000

    def test_heartbeat_must_fit_the_session_three_times(self, env: dict[str, str]) -> None:
        with pytest.raises(ConfigError, match="KAFKA_WORKER_HEARTBEAT_INTERVAL_MS"):
            Settings.load(
                {
                    **env,
                    "CUMI_MAILBOX_SOURCE": "registry",
                    "KAFKA_WORKER_SESSION_TIMEOUT_MS": "6000",
                    "KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "2001",
                }
            )

    def test_unknown_source(self, env: dict[str, str]) -> None:
        with pytest.raises(ConfigError, match=r"CUMI_MAILBOX_SOURCE must be one of file\|registry"):
            Settings.load({**env, "CUMI_MAILBOX_SOURCE": "ldap"})


class TestRegistryTopic:
    """The registry topic: compacted, partitioned for balance among the workers."""

    def test_spec(self) -> None:
        names = TopicNames()
        (spec,) = [s for s in default_specs(names) if s.name == names.registry]
        assert spec.partitions == REGISTRY_PARTITIONS == 24
        assert spec.config == {"cleanup.policy": "compact"}


class TestCredentialRefs:
    """A registry entry's credentials_ref picks the secret; without one, the alias does."""

    async def test_reference_or_alias(self, tmp_path: Path) -> None:
        path = tmp_path / "secrets.json"
        path.write_text(
            json.dumps({"abell": {"password": "a"}, "team-a": {"username": "svc", "password": "t"}})
        )
        refs = CredentialRefs(FileCredentials(path))
        own = await refs.credential_for("abell")
        refs.refs["bwayne"] = "team-a"
        shared = await refs.credential_for("bwayne")
        assert own.authorization.reveal() != shared.authorization.reveal()
        assert shared == await FileCredentials(path).credential_for("team-a")
