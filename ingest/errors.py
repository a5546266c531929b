"""The project's error hierarchy.

`retriable` tells a caller whether trying again can help: invalid input never becomes valid (it
goes to the dead-letter topic), while transport and broker errors are retried with backoff.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(IngestError):
    """A setting is missing or bad; the message names the setting and says what is valid."""


class KafkaAccessRefused(ConfigError):
    """Kafka refused our credentials (SASL) or client certificate, or we refused its certificate:
    trying again cannot help. Raised at start-up, before any Kafka client of ours is started; the
    process stops with one line that names the settings to check."""


class InvalidEvent(IngestError):
    """A raw Comet payload cannot become a MailboxEvent: dead-lettered, never retried.

    `reason` is a stable machine-readable code (a `RejectReason`), `field` the offending field.
    """

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        where = f" (field {field})" if field else ""
        super().__init__(f"{reason}{where}: {detail}")


class DecodeError(IngestError):
    """Bytes from Kafka are not a record this package can decode (unknown fingerprint, bad body)."""


class TransportError(IngestError):
    """The CUMI server could not be reached or answered with a transient failure."""

    retriable = True


class AuthError(IngestError):
    """The CUMI server refused one mailbox's credentials (HTTP 401/403); not retried blindly."""


class BrokerError(IngestError):
    """Kafka is unavailable or refused a request."""

    retriable = True


class SchemaRegistryUnavailable(BrokerError):
    """The schema registry (KAFKA_SCHEMA_REGISTRY_URL) cannot be reached or failed a request."""


class SchemaRefused(ConfigError):
    """The schema registry refused one of our schemas (incompatible with the subject's versions,
    or the credentials may not register): the process stops at start, before writing anything."""


class TopicMissing(BrokerError):
    """A topic the command or service needs does not exist (create it: `docs/operations.md`)."""

    retriable = False


class DevServiceError(IngestError):
    """A local development service (ingest.devservices: the Kafka broker or cluster, the schema
    registry, the reference CometD server) could not be fetched, built, formatted or started."""
