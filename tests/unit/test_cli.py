"""The `ingest` command line without a broker: one line per mistake, `--log-level` anywhere,
`--version`, and the exit codes as docs/operations.md lists them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from ingest import cli
from ingest.commands._exits import Exit, exit_code, explain
from ingest.errors import BrokerError, ConfigError, TopicMissing

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr of a command line argparse refuses."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().err


class TestMistakes:
    """A mistake is one line naming it and where to look; exit 2."""

    @pytest.mark.parametrize(
        ("argv", "said"),
        [
            (["--log-level", "bogus", "fold"], "'bogus' is not a log level; use one of DEBUG"),
            (["fold", "--log-level", "bogus"], "'bogus' is not a log level"),
            (["replay", "--all", "--at", "yesterday"], "is not ISO 8601, epoch milliseconds"),
            (["replay"], "one of the arguments --mailbox --all is required"),
            (["topics", "check", "--events-partitions", "0"], "must be an integer ≥ 1"),
            (["nonsense"], "invalid choice: 'nonsense'"),
        ],
    )
    def test_one_line(self, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
        code, err = fails(argv, capsys)
        assert code == Exit.USAGE
        assert said in err
        assert err.count("\n") == 1, err
        assert "--help" in err and "Traceback" not in err and "usage:" not in err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--version"])
        assert exit_info.value.code == 0
        assert re.fullmatch(r"ingest \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


class TestLogLevel:
    """`--log-level` before or after the sub-command (and its action); the last one wins."""

    @pytest.mark.parametrize(
        ("argv", "level"),
        [
            (["replay", "--all"], "INFO"),
            (["--log-level", "warning", "replay", "--all"], "WARNING"),
            (["replay", "--all", "--log-level", "debug"], "DEBUG"),
            (["--log-level", "error", "replay", "--log-level", "debug", "--all"], "DEBUG"),
            (["mailboxes", "list", "--log-level", "error"], "ERROR"),
            (["topics", "check", "--log-level", "critical", "--json"], "CRITICAL"),
        ],
    )
    def test_anywhere(self, argv: list[str], level: str) -> None:
        command = cli._chosen_command(argv)
        assert cli.build_parser(command).parse_args(argv).log_level == level


class TestExplain:
    """Failures become one sentence: no Python reprs, and what to do."""

    def test_unreachable_broker(self) -> None:
        error = BrokerError("describing topic x: KafkaConnectionError(...)")
        error.__cause__ = KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1, …)]")
        line = explain(error, "127.0.0.1:1")
        assert line.startswith("cannot reach Kafka at 127.0.0.1:1: check --bootstrap")
        assert "(" not in line and exit_code(error) == Exit.FAILED

    def test_timeout(self) -> None:
        assert explain(KafkaTimeoutError(), "k:9092").startswith("Kafka at k:9092 did not answer")

    def test_missing_topic_says_how_to_create_it(self) -> None:
        line = explain(TopicMissing("topic 'prod-mailbox-events' does not exist"))
        assert line.endswith("or run `ingest topics apply`")
        assert exit_code(TopicMissing("x")) == Exit.USAGE

    def test_configuration(self) -> None:
        assert explain(ConfigError("KAFKA_LINGER_MS must be ≤ 10000")) == (
            "KAFKA_LINGER_MS must be ≤ 10000"
        )
        assert exit_code(ConfigError("x")) == Exit.USAGE


class TestExitCodesDocumented:
    """docs/operations.md lists every exit code with its number, and no other."""

    def test_table(self) -> None:
        text = OPERATIONS.read_text(encoding="utf-8")
        section = text[text.index("## Exit codes") :]
        section = section[: section.index("\n## ", 4)] if "\n## " in section[4:] else section
        documented = {
            int(n): name for n, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", section, re.M)
        }
        assert documented == {code.value: code.name for code in Exit}
