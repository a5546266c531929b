"""`ingest fold`: raw Comet JSON lines → folder state, invalid lines reported, never fatal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.commands.fold import FoldStats, fold_stream
from ingest.cumi.normalizer import TimeZones
from ingest.state.projection import Projection

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # .venv/bin/python under `make test`


def line(event_type: str, usn: int, *message_ids: str, mailbox: str = "abell") -> str:
    """One raw Comet event as the server sends it (the vendor example's shape)."""
    return json.dumps(
        {
            "MessageInfo": [
                {
                    "CallerAni": "null",
                    "Sender": "null",
                    "MessageId": mid,
                    "ReceiveTime": "04:15:40 PM 10/30/2008",
                    "Priority": "Normal-Priority",
                    "MsgType": "Voice",
                }
                for mid in message_ids or ("m",)
            ],
            "USN": usn,
            "EventTime": "11:15:40 PM 10/30/2008",
            "SubscriptionId": "00bdcfd3-159a-48d3-ac7b-2f3b4f83db6c",
            "MailboxId": mailbox,
            "EventType": event_type,
            "DisplayName": "Alexander Bell",
        }
    )


def fold_lines(*lines: str, **kwargs: Any) -> tuple[dict[str, Any], FoldStats, list[str]]:
    projection = Projection()
    report = io.StringIO()
    stream = io.BytesIO("\n".join(lines).encode() + b"\n")
    stats = fold_stream(stream, projection, report=report, **kwargs)
    return projection.to_json(), stats, report.getvalue().splitlines()


def state(inbox: dict[str, bool], deleted: dict[str, bool], usn: int) -> dict[str, Any]:
    return {
        "inbox": {mid: {"read": read} for mid, read in inbox.items()},
        "deleted": {mid: {"read": read} for mid, read in deleted.items()},
        "usn": usn,
    }


ARRIVE_AND_READ = (line("NEW_MESSAGE", 2264), line("SAVED_MESSAGE", 2265))


class TestVendorExamples:
    """The vendor document's three examples, from raw JSON lines."""

    def test_example_1_delete(self) -> None:
        lines = (
            *ARRIVE_AND_READ,
            line("DELETED_MESSAGE", 2266),
            line("DELETED_MESSAGE_CREATE", 2266),
        )
        result, stats, report = fold_lines(*lines)
        assert result == {"abell": state({}, {"m": True}, 2266)}
        assert (stats.applied, stats.invalid, report) == (4, 0, [])

    @pytest.mark.parametrize(
        ("restore", "read"), [("SAVED_MESSAGE", True), ("UNREAD_MESSAGE", False)]
    )
    def test_example_2_undelete_as_read_or_unread(self, restore: str, read: bool) -> None:
        result, _, _ = fold_lines(
            *ARRIVE_AND_READ,
            line("DELETED_MESSAGE_CREATE", 2266),
            line("DELETED_MESSAGE", 2266),
            line("DELETED_MESSAGE_DELETE", 2267),
            line(restore, 2267),
        )
        assert result == {"abell": state({"m": read}, {}, 2267)}

    def test_example_3_hard_delete(self) -> None:
        result, _, _ = fold_lines(
            *ARRIVE_AND_READ,
            line("DELETED_MESSAGE", 2266),
            line("DELETED_MESSAGE_CREATE", 2266),
            line("DELETED_MESSAGE_DELETE", 2270),
        )
        assert result == {"abell": state({}, {}, 2270)}


class TestSemantics:
    """Notifier downtime, duplicates and stale events through the whole offline path."""

    def test_notifier_downtime_latest_status(self) -> None:
        result, _, _ = fold_lines(
            line("NEW_MESSAGE", 10, "a"),
            line("NEW_MESSAGE", 11, "b"),
            line("NEW_MESSAGE", 12, "c"),
            # Notifier down: a read then deleted, b hard-deleted, d arrived and was read;
            # back up, it sends only the latest status of each changed message
            line("DELETED_MESSAGE_READ", 15, "a"),
            line("DELETED_MESSAGE_DELETE", 17, "b"),
            line("SAVED_MESSAGE", 18, "d"),
        )
        assert result == {"abell": state({"c": False, "d": True}, {"a": True}, 18)}

    def test_duplicates(self) -> None:
        again = line("SAVED_MESSAGE", 2265)
        result, stats, _ = fold_lines(*ARRIVE_AND_READ, again, again, line("NEW_MESSAGE", 2264))
        assert result == {"abell": state({"m": True}, {}, 2265)}
        assert (stats.applied, stats.duplicates, stats.stale) == (2, 2, 1)

    def test_late_event_takes_its_place_in_usn_order(self) -> None:
        # issue 19: read at 6, deleted at 7, the read arriving last; the delete pair carries the
        # flag along, so the message is deleted *and read*, as in USN order
        result, stats, _ = fold_lines(
            line("NEW_MESSAGE", 5),
            line("DELETED_MESSAGE_CREATE", 7),
            line("DELETED_MESSAGE", 7),
            line("SAVED_MESSAGE", 6),
        )
        assert result == {"abell": state({}, {"m": True}, 7)}
        assert (stats.applied, stats.stale) == (4, 0)

    def test_event_older_than_a_stating_one_does_not_roll_back(self) -> None:
        result, stats, _ = fold_lines(
            line("NEW_MESSAGE", 5), line("SAVED_MESSAGE", 6), line("NEW_MESSAGE", 5)
        )
        assert result == {"abell": state({"m": True}, {}, 6)}
        assert stats.stale == 1

    def test_restore_from_deleted_keeps_other_mailboxes_apart(self) -> None:
        result, _, _ = fold_lines(
            line("DELETED_MESSAGE_CREATE", 3, "x", mailbox="one"),
            line("DELETED_MESSAGE_READ", 4, "x", mailbox="one"),
            line("UNREAD_MESSAGE", 5, "x", mailbox="one"),
            line("DELETED_MESSAGE_DELETE", 5, "x", mailbox="one"),
            line("DELETED_MESSAGE_UNREAD", 9, "x", mailbox="two"),
        )
        assert result == {"one": state({"x": False}, {}, 5), "two": state({}, {"x": False}, 9)}

    def test_time_zones(self) -> None:
        projection = Projection()
        pacific = TimeZones(receive_time=ZoneInfo("America/Los_Angeles"))
        fold_stream(io.BytesIO(line("NEW_MESSAGE", 1).encode()), projection, pacific)
        message = projection.to_json(detail=True)["abell"]["inbox"]["m"]
        assert message["receive_time"] == "2008-10-30T23:15:40+00:00"


class TestInvalidLines:
    """Each invalid line is reported with its number and reason, counted, and skipped."""

    def test_reported_and_counted(self) -> None:
        result, stats, report = fold_lines(
            line("NEW_MESSAGE", 1),
            "this is not json",
            "",
            "[1, 2]",
            line("MESSAGE_MOVED", 2),
            json.dumps({**json.loads(line("SAVED_MESSAGE", 2)), "USN": -1}),
            line("SAVED_MESSAGE", 3),
        )
        assert result == {"abell": state({"m": True}, {}, 3)}
        assert report == [
            "line 2: not_json: Expecting value: line 1 column 1 (char 0)",
            "line 4: not_an_object: top level is a JSON array",
            "line 5: unknown_event_type (field EventType): unknown EventType 'MESSAGE_MOVED'",
            "line 6: bad_value (field USN): USN -1 out of range",
        ]
        assert (stats.lines, stats.blank, stats.invalid, stats.applied) == (7, 1, 4, 2)

    def test_overlong_line_skipped_without_reading_it_whole(self) -> None:
        long = json.dumps({"pad": "x" * 5000})
        _, stats, report = fold_lines(long, line("NEW_MESSAGE", 1), max_bytes=1000)
        assert report == ["line 1: too_large: line longer than 1000 bytes"]
        assert (stats.invalid, stats.applied) == (1, 1)

    def test_crlf_and_binary_garbage(self) -> None:
        projection = Projection()
        report = io.StringIO()
        data = line("NEW_MESSAGE", 1).encode() + b"\r\n\xff\xfe\x00\n"
        stats = fold_stream(io.BytesIO(data), projection, report=report)
        assert (stats.applied, stats.invalid) == (1, 1)
        assert report.getvalue().startswith("line 2: not_json")


def run_cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "ingest", "fold", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


class TestCommandLine:
    """`python -m ingest fold` as a process: stdout JSON, stderr report, exit status."""

    def test_file_with_invalid_lines(self, tmp_path: Path) -> None:
        source = tmp_path / "events.jsonl"
        source.write_text(
            "\n".join([*ARRIVE_AND_READ, "{oops", line("DELETED_MESSAGE", 2266)]) + "\n"
        )
        done = run_cli(str(source))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"abell": state({}, {}, 2266)}
        assert done.stdout == json.dumps(json.loads(done.stdout), sort_keys=True) + "\n"
        errors = done.stderr.splitlines()
        assert errors[0].startswith("line 3: not_json: ")
        assert errors[-1] == (
            "fold: 4 lines, 3 events (3 applied, 0 duplicates, 0 stale), 1 invalid, 0 blank"
        )

    def test_stdin_pretty_and_zone_from_environment(self) -> None:
        done = run_cli(
            "-",
            "--pretty",
            "--detail",
            stdin=line("NEW_MESSAGE", 1),
            CUMI_EVENT_TIME_ZONE="Asia/Tokyo",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith('{\n  "abell": {')
        assert json.loads(done.stdout)["abell"]["updated_at"] == "2008-10-30T14:15:40+00:00"

    def test_exit_status(self, tmp_path: Path) -> None:
        missing = run_cli(str(tmp_path / "missing.jsonl"))
        assert missing.returncode == 1
        assert "cannot read" in missing.stderr
        bad_zone = run_cli("--receive-time-zone", "Mars/Olympus_Mons", stdin="")
        assert bad_zone.returncode == 2
        assert "not an IANA time zone" in bad_zone.stderr

    def test_empty_input(self) -> None:
        done = run_cli(stdin="")
        assert (done.returncode, done.stdout) == (0, "{}\n")
