"""ingest.worker: what the worker says at start (its wiring runs in tests/integration)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ingest.settings import Settings
from ingest.worker import note_receive_time_zone


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
