"""What the worker says once, at start: when its connection to Connection exposes the mailbox
credentials (a certificate it does not check, CUMI_TLS_VERIFY=false, or credentials over http://),
and how it reads ReceiveTime without CUMI_SERVER_TIME_ZONE."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ingest.settings import Settings
from ingest.worker import Worker, note_receive_time_zone, transport_warnings


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    mailboxes = tmp_path / "mailboxes.txt"
    mailboxes.write_text("alice\n")
    creds = tmp_path / "users.json"
    creds.write_text(json.dumps({"alice": {"password": "pw"}}))
    return {
        "CUMI_SERVER_URL": "https://cuc.example.com",
        "CUMI_MAILBOXES_FILE": str(mailboxes),
        "CUMI_CREDENTIALS_FILE": str(creds),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    }


class TestTransportWarnings:
    def test_none_for_verified_https(self, env: dict[str, str]) -> None:
        assert transport_warnings(Settings.load(env)) == []

    def test_tls_verify_off(self, env: dict[str, str]) -> None:
        (warning,) = transport_warnings(Settings.load(env | {"CUMI_TLS_VERIFY": "false"}))
        assert warning.startswith("CUMI_TLS_VERIFY=false: the Connection server's certificate")
        assert "CUMI_TLS_CA_FILE" in warning

    def test_http_sends_credentials_in_clear(self, env: dict[str, str]) -> None:
        settings = Settings.load(env | {"CUMI_SERVER_URL": "http://cuc.example.com"})
        (warning,) = transport_warnings(settings)
        assert warning.startswith("CUMI_SERVER_URL and CUMI_COMETD_URL use http://")
        assert "in clear" in warning

    def test_only_the_bayeux_url_in_clear(self, env: dict[str, str]) -> None:
        plain = env | {"CUMI_COMETD_URL": "http://cuc.example.com:7080/vmevents/cometd"}
        (warning,) = transport_warnings(Settings.load(plain))
        assert warning.startswith("CUMI_COMETD_URL uses http://")


async def test_said_once_at_start(
    env: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run()` logs each warning once, before any wiring (stubbed here: no sockets)."""

    async def wiring(self: Worker, aliases: list[str]) -> int:
        return 0

    monkeypatch.setattr(Worker, "_run", wiring)
    caplog.set_level(logging.WARNING, logger="ingest.worker")
    insecure = env | {
        "CUMI_SERVER_URL": "http://cuc.example.com",
        "CUMI_TLS_VERIFY": "false",
        "CUMI_SERVER_TIME_ZONE": "UTC",  # else a third line, about ReceiveTime's zone
    }
    assert await Worker(Settings.load(insecure)).run() == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "ingest.worker"]
    assert len(lines) == 2
    assert lines[0].startswith("CUMI_TLS_VERIFY=false") and "http://" in lines[1]


class TestReceiveTimeZone:
    """Without CUMI_SERVER_TIME_ZONE, one line says ReceiveTime is read as UTC and how to set it."""

    def test_one_line_when_not_set(
        self, env: dict[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, "ingest.worker"):
            note_receive_time_zone(Settings.load(env).cumi)
        (line,) = caplog.records
        assert line.levelno == logging.WARNING
        text = line.getMessage()
        assert "ReceiveTime is read as UTC" in text
        assert "CUMI_SERVER_TIME_ZONE=" in text
        assert "\n" not in text

    @pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
    def test_silent_when_set(
        self, env: dict[str, str], zone: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Set, even to UTC (then UTC is a decision, not a default)."""
        with caplog.at_level(logging.INFO, "ingest.worker"):
            note_receive_time_zone(Settings.load(env | {"CUMI_SERVER_TIME_ZONE": zone}).cumi)
        assert caplog.records == []

    def test_blank_counts_as_not_set(
        self, env: dict[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, "ingest.worker"):
            note_receive_time_zone(Settings.load(env | {"CUMI_SERVER_TIME_ZONE": " "}).cumi)
        assert len(caplog.records) == 1
