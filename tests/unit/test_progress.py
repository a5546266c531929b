"""Progress off a terminal (`ingest.ops.progress.LoggedProgress`, the replay's adapter in
`ingest.commands.progress`): every line tells the truth, totals first, never silent for long."""

from __future__ import annotations

import sys

import pytest
from fakes import FakeClock

from ingest.commands.progress import ReplayProgress
from ingest.ops.progress import LoggedProgress

LOGGER = "ingest.ops.progress"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


class TestLoggedProgress:
    """A line at every further 10 %, and every `every` seconds while the work moves."""

    def test_a_line_every_tenth(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        clock = FakeClock()
        progress = LoggedProgress("records", 1000, clock=clock)
        for done in range(0, 1001, 25):
            progress.update(done)
        progress.close()
        assert len(lines(caplog)) == 10
        assert lines(caplog)[-1].startswith("records 1000/1000 (100%")

    def test_periodic_while_a_tenth_takes_long(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        clock = FakeClock()
        progress = LoggedProgress("records", 1_000_000, every=10.0, clock=clock)
        for second in range(1, 61):  # one minute at 1,000 records a second: 6 % in all
            clock.advance(1.0)
            progress.update(second * 1000)
        assert lines(caplog) == [
            f"records {n}/1000000 ({n / 10_000:.0f}%, 1000/s)"
            for n in (10_000, 20_000, 30_000, 40_000, 50_000, 60_000)
        ]

    def test_silent_while_nothing_moves(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        clock = FakeClock()
        progress = LoggedProgress("records", 100, clock=clock)
        for _ in range(5):
            clock.advance(30.0)
            progress.update(0)
        assert lines(caplog) == []

    def test_start_line_names_the_total(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        progress = LoggedProgress("records", 500, start_line=True, clock=FakeClock())
        progress.update(0)
        progress.update(0)
        assert lines(caplog) == ["records 0/500 (0%, 0/s)"]

    def test_close_writes_where_it_ended(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        progress = LoggedProgress("records", 1000, clock=FakeClock())
        progress.update(950)
        progress.update(1000, total=1010)  # the total grew meanwhile
        progress.close()
        assert lines(caplog)[-1].startswith("records 1000/1010 (99%")


class TestReplayProgress:
    """The replay's (done, total) callback: no line before the total is known."""

    def test_no_made_up_totals(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        caplog.set_level("INFO", logger=LOGGER)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
        progress = ReplayProgress()
        progress(0, 0)  # worker processes not started yet
        assert lines(caplog) == []
        progress(0, 2000)
        progress(2000, 2000)
        progress.close()
        assert lines(caplog) == [
            "replay: records 0/2000 (0%, 0/s)",
            *[line for line in lines(caplog)[1:] if line.startswith("replay: records 2000/2000")],
        ]
        assert len(lines(caplog)) == 2
        assert all("/0 " not in line for line in lines(caplog))
