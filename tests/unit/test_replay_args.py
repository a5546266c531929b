"""`ingest replay` arguments: one target, at most one bound, times in ISO 8601 or epoch ms."""

from __future__ import annotations

import argparse
import datetime as dt
import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from ingest.commands.replay import add_arguments, bound_of, parse_time
from ingest.errors import ConfigError
from ingest.eventlog.topics import partition_for
from ingest.state.replay import UntilOffset, UntilTime, UntilUsn


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingest replay")
    add_arguments(parser)
    return parser.parse_args(argv)


class TestTargets:
    """Exactly one of --mailbox and --all."""

    def test_mailbox(self) -> None:
        args = parse("--mailbox", "jdoe")
        assert (args.mailbox, args.all) == ("jdoe", False)

    def test_all(self) -> None:
        args = parse("--all")
        assert (args.mailbox, args.all) == (None, True)

    @pytest.mark.parametrize("argv", [(), ("--mailbox", "a", "--all")])
    def test_neither_or_both_is_an_error(
        self, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            parse(*argv)
        assert exit_info.value.code == 2
        capsys.readouterr()


class TestBounds:
    """At most one of --at, --usn, --offset; the per-mailbox ones need --mailbox."""

    def test_no_bound_is_the_whole_log(self) -> None:
        assert bound_of(parse("--all")) is None

    def test_usn(self) -> None:
        assert bound_of(parse("--mailbox", "a", "--usn", "2265")) == UntilUsn(2265)

    def test_offset(self) -> None:
        assert bound_of(parse("--mailbox", "a", "--offset", "0")) == UntilOffset(0)

    def test_time(self) -> None:
        bound = bound_of(parse("--all", "--at", "2024-03-01T08:00:00Z"))
        assert bound == UntilTime(dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC))

    @pytest.mark.parametrize("flag", ["--usn", "--offset"])
    def test_per_mailbox_bounds_need_a_mailbox(self, flag: str) -> None:
        with pytest.raises(ConfigError, match="--mailbox"):
            bound_of(parse("--all", flag, "5"))

    def test_two_bounds_are_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            parse("--mailbox", "a", "--usn", "5", "--offset", "7")
        assert "not allowed with" in capsys.readouterr().err

    @pytest.mark.parametrize("value", ["-1", "x", "1.5"])
    def test_negative_or_non_integer_is_an_error(
        self, value: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit):
            parse("--mailbox", "a", "--usn", value)
        assert "must be an integer" in capsys.readouterr().err


class TestParseTime:
    """ISO 8601 with or without zone (none = UTC), or epoch milliseconds."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-03-01T08:00:00Z", dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)),
            ("2024-03-01T08:00:00", dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)),
            ("2024-03-01T00:00:00-08:00", dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)),
            ("2024-03-01 08:00:00.250+00:00", dt.datetime(2024, 3, 1, 8, 0, 0, 250_000, dt.UTC)),
            ("1709280000000", dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)),
            ("0", dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        ],
    )
    def test_accepted(self, text: str, expected: dt.datetime) -> None:
        assert parse_time(text) == expected

    def test_until_time_in_epoch_millis(self) -> None:
        assert UntilTime(parse_time("1709280000123")).millis == 1709280000123

    @pytest.mark.parametrize("text", ["yesterday", "2024-13-01", ""])
    def test_rejected(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time(text)


class TestPartitionFor:
    """The partition of a mailbox is the producer's: aiokafka's DefaultPartitioner (murmur2)."""

    @pytest.mark.parametrize("count", [1, 3, 12, 50])
    def test_same_as_the_default_partitioner(self, count: int) -> None:
        rng = random.Random(count)
        partitioner = DefaultPartitioner()
        every = list(range(count))
        keys = ["jdoe", "user0001", "ü-ñ", ""] + [f"user{rng.randrange(10**6)}" for _ in range(500)]
        for key in keys:
            assert partition_for(key, count) == partitioner(key.encode(), every, every), key

    def test_spreads_keys(self) -> None:
        used = {partition_for(f"user{i:04d}", 12) for i in range(200)}
        assert used == set(range(12))
