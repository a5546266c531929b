"""`ingest kpis` settings: the urgent thresholds and the defaults, one readable error each."""

from __future__ import annotations

import pytest

from ingest.errors import ConfigError
from ingest.kpis.consumer import KpiSettings, parse_thresholds


class TestThresholds:
    """CUMI_KPIS_URGENT_THRESHOLDS: durations, sorted, distinct, at most eight."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            (None, (3600.0, 14_400.0, 86_400.0)),
            ("24h, 1h,4h", (3600.0, 14_400.0, 86_400.0)),
            ("90s,30m,2d,45", (45.0, 90.0, 1800.0, 172_800.0)),
        ],
    )
    def test_accepted(self, text: str | None, seconds: tuple[float, ...]) -> None:
        assert parse_thresholds(text, "X") == seconds

    @pytest.mark.parametrize(
        "text", ["", "1h,,4h", "1w", "-1h", "0", "1h,60m", "1,2,3,4,5,6,7,8,9"]
    )
    def test_refused(self, text: str) -> None:
        with pytest.raises(ConfigError, match="X must"):
            parse_thresholds(text, "X")


def test_defaults() -> None:
    settings = KpiSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert settings.group_id == "cumi-kpis"
    assert settings.kafka.events_topic == "mailbox-events"
    assert settings.urgent_thresholds == (3600.0, 14_400.0, 86_400.0)
    assert settings.http_port == 9102
