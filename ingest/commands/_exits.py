"""Exit codes of the `ingest` commands and the one line that explains a failure.

Every mistake ends a command with one line on stderr, `ingest <command>: <what>; <what to do>`,
never a Python repr or a traceback, and one of these codes (documented in docs/operations.md,
"Exit codes"):
"""

from __future__ import annotations

import enum

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from ingest.errors import ConfigError, IngestError, TopicMissing


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1
    """Could not finish: Kafka unreachable or refused a request, a service failed."""
    USAGE = 2
    """A bad argument or setting, a missing topic or file: fix the command or the configuration."""
    FENCED = 3
    """The projector was fenced by a newer instance (services only)."""
    DRIFT = 4
    """`ingest topics check|apply`: the topics differ from their specs (each difference listed)."""
    NOT_FOUND = 5
    """What was asked for does not exist (`ingest replay --mailbox` of an unknown mailbox)."""
    INTERRUPTED = 130
    """Ctrl-C."""


def explain(error: BaseException, bootstrap: str | None = None) -> str:
    """One line for a failure: what happened, and what to do."""
    where = f" at {bootstrap}" if bootstrap else ""
    cause = _kafka_cause(error)
    if isinstance(cause, KafkaConnectionError):
        return (
            f"cannot reach Kafka{where}: check --bootstrap / KAFKA_BOOTSTRAP_SERVERS and that "
            "the brokers are up"
        )
    if isinstance(cause, KafkaTimeoutError):
        return (
            f"Kafka{where} did not answer in time: check that the brokers are up and reachable "
            "(security protocol and ports)"
        )
    if isinstance(error, TopicMissing):
        return f"{error}: check KAFKA_TOPIC_PREFIX and the names, or run `ingest topics apply`"
    if isinstance(error, IngestError) and not isinstance(cause, KafkaError):
        return str(error)
    if cause is not None:
        return f"Kafka{where} refused the request ({type(cause).__name__}): {error}"
    return f"{type(error).__name__}: {error}"


def exit_code(error: BaseException) -> Exit:
    """The code a command exits with after `error`."""
    if isinstance(error, ConfigError | TopicMissing):
        return Exit.USAGE
    return Exit.FAILED


def _kafka_cause(error: BaseException) -> KafkaError | None:
    """The Kafka client error behind `error` (itself, or one it was raised from)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KafkaError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
