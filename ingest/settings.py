"""Configuration: one frozen settings tree read from environment variables and/or a config file.

Every setting has exactly one name, the environment variable name (`CUMI_…` for the CUMI side
and the worker, `KAFKA_…` for the broker); the Helm chart renders these names and
docs/configuration.md lists them all. A config file (JSON or TOML, given by `--config` or
`CUMI_CONFIG`) holds the same names as top-level keys; environment variables override it. Values
are validated when loaded, and a bad value raises `ConfigError` naming the setting and what would
be valid — never echoing a secret.

Secrets never travel in plain environment variables: settings ending in `_FILE` name a file whose
content is read into a `Secret`, whose repr is `***`.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiokafka import codec

from ingest.errors import ConfigError

E = TypeVar("E", bound=enum.StrEnum)

CONFIG_FILE_VAR = "CUMI_CONFIG"
_IN_KUBERNETES = "KUBERNETES_SERVICE_HOST"
"""Set by the kubelet in every pod: where the HTTP servers may bind every address by default."""
_USERINFO = re.compile(r"^([^/@]*//)?[^/@]*@")
"""`user:password@` at the start of a URL (with or without a scheme)."""


class Secret:
    """A secret string that never shows itself in a repr, str, log line or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is handed to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class CometTransport(enum.StrEnum):
    LONG_POLLING = "long-polling"
    WEBSOCKET = "websocket"


class MailboxSource(enum.StrEnum):
    """Where a worker's mailboxes come from (CUMI_MAILBOX_SOURCE)."""

    FILE = "file"
    """CUMI_MAILBOXES_FILE: a fixed list; every worker given the file watches all of it."""
    REGISTRY = "registry"
    """The registry topic, shared by one consumer group of workers (ingest.mailboxes.assignment)."""


class CredentialsProviderKind(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    DELEGATE = "delegate"


class SecurityProtocol(enum.StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(enum.StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class SettingsSource:
    """Raw values by setting name (file merged under environment) with typed, validating getters.

    Other processes (the projector) read their own settings through the same class so every name
    follows one scheme and fails the same readable way.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = {k.upper(): v for k, v in values.items()}

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> SettingsSource:
        env = os.environ if env is None else env
        path = config_file or env.get(CONFIG_FILE_VAR) or None
        merged: dict[str, Any] = dict(read_config_file(Path(path))) if path else {}
        ours = ("CUMI_", "KAFKA_", _IN_KUBERNETES)
        merged.update({k: v for k, v in env.items() if k.startswith(ours)})
        return cls(merged)

    def raw(self, name: str) -> Any:
        value = self._values.get(name)
        return None if value is None or (isinstance(value, str) and value.strip() == "") else value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else str(value).strip()

    def required(self, name: str, what: str) -> str:
        value = self.text(name)
        if value is None:
            raise ConfigError(f"{name} is required: {what}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(f"{name} must be an integer at least {minimum}{upper}, got {value!r}")
        return number

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number) or number <= minimum:
            raise ConfigError(f"{name} must be a number greater than {minimum:g}, got {value!r}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, enum_type: type[E], default: E) -> E:
        value = self.text(name)
        if value is None:
            return default
        for member in enum_type:
            if member.value.lower() == value.lower():
                return member
        allowed = "|".join(m.value for m in enum_type)
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")

    def zone(self, name: str, default: str = "UTC") -> ZoneInfo:
        value = self.text(name, default) or default
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(
                f"{name} must be an IANA time zone like UTC or America/Los_Angeles, got {value!r}"
            ) from e

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.text(name, default)
        if value is None:
            return None
        parts = urlsplit(value)
        shown = _USERINFO.sub(r"\1***@", value)  # error messages never echo a password
        if "@" in parts.netloc or shown != value:
            raise ConfigError(
                f"{name} must not carry credentials (user:password@), got {shown!r}: they would "
                "be logged with the settings; mailbox credentials come from CUMI_CREDENTIALS_*"
            )
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(
                f"{name} must be a {'/'.join(schemes)} URL with a host, got {shown!r}"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ConfigError(f"{name} has an invalid port: {shown!r}") from e
        return value.rstrip("/")

    def path(self, name: str, *, must_exist: bool = True, directory: bool = False) -> Path | None:
        value = self.text(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if must_exist:
            ok = path.is_dir() if directory else path.is_file()
            if not ok:
                kind = "directory" if directory else "file"
                raise ConfigError(f"{name} must name an existing {kind}, got {value!r}")
        return path

    def secret_file(self, name: str) -> Secret | None:
        path = self.path(name)
        if path is None:
            return None
        try:
            content = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {str(path)!r}: {e.strerror}") from e
        if not content:
            raise ConfigError(f"{name}: file {str(path)!r} is empty")
        return Secret(content)


def read_config_file(path: Path) -> Mapping[str, Any]:
    """Top-level keys of a JSON or TOML file (by extension; TOML unless it ends in .json)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{CONFIG_FILE_VAR}: cannot read config file {str(path)!r}: {e.strerror}"
        ) from e
    try:
        parsed: Any = (
            json.loads(data) if path.suffix.lower() == ".json" else tomllib.loads(data.decode())
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{CONFIG_FILE_VAR}: {str(path)!r} is not valid JSON/TOML: {e}") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"{CONFIG_FILE_VAR}: {str(path)!r} must hold a table/object of settings")
    nested = [k for k, v in parsed.items() if isinstance(v, dict | list)]
    if nested:
        raise ConfigError(
            f"{CONFIG_FILE_VAR}: {str(path)!r}: settings are flat NAME = value pairs, "
            f"but {nested[0]!r} is nested"
        )
    return parsed


def derive_cometd_url(server_url: str) -> str:
    """Same host as the REST base; Jetty's port 7080 for http, 7443 for https; /vmevents/cometd."""
    parts = urlsplit(server_url)
    port = 7443 if parts.scheme == "https" else 7080
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}:{port}", "/vmevents/cometd", "", ""))


@dataclass(frozen=True, slots=True)
class CumiSettings:
    """The CUMI server, its REST throttle and the Comet session."""

    server_url: str
    """CUMI_SERVER_URL: REST base, e.g. https://cuc.example.com."""
    cometd_url: str
    """CUMI_COMETD_URL: Bayeux endpoint (default: same host, 7080/7443, /vmevents/cometd)."""
    server_name: str
    """CUMI_SERVER_NAME: the `source` label on records (default: the server host)."""
    tls_verify: bool
    tls_ca_file: Path | None
    comet_transport: CometTransport
    rest_concurrency: int
    rest_timeout_seconds: float
    rest_max_attempts: int
    rest_backoff_base_seconds: float
    rest_backoff_max_seconds: float
    auth_retry_seconds: float
    """How long a mailbox whose credentials were refused waits before it is tried again."""
    stall_timeout_seconds: float
    """CUMI_STALL_TIMEOUT_SECONDS: silence before the watchdog rebuilds the session; never less
    than the server's advised long-poll hold plus a margin (a healthy idle session is silent)."""
    subscribe_batch_size: int
    subscribe_batch_bytes: int
    """CUMI_SUBSCRIBE_BATCH_BYTES: the largest subscribe request, encoded (the reference CometD
    server closes a WebSocket on a message over 64 KiB)."""
    reuse_subscriptions: bool
    """CUMI_REUSE_SUBSCRIPTIONS: after a session the server itself disconnected (so the server
    that issued the subscriptionIds still runs), try each mailbox's old subscriptionId before
    asking for a new one. After any other loss every mailbox asks anew (docs/design.md §6)."""
    reconcile_page_size: int
    reconcile_concurrency: int
    event_time_zone: ZoneInfo
    server_time_zone: ZoneInfo
    mailbox_source: MailboxSource
    mailboxes_file: Path | None
    """Required with the file source; not used with the registry source."""
    dead_letter_repair_interval_seconds: float = 30.0
    """CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS: at most one gap repair per mailbox in this time
    because of dead letters naming it (one more follows at its end if another came meanwhile)."""
    server_time_zone_set: bool = True
    """Whether CUMI_SERVER_TIME_ZONE was given (else ReceiveTime is read as UTC, and the worker
    says so at start)."""

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What aiohttp's `ssl=` takes: a verifying context (custom CA if set) or False."""
        if not self.tls_verify:
            return False
        return ssl.create_default_context(
            cafile=str(self.tls_ca_file) if self.tls_ca_file else None
        )


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    provider: CredentialsProviderKind
    file: Path | None
    directory: Path | None
    delegate_user: str | None
    delegate_password: Secret | None
    delegate_token: Secret | None


@dataclass(frozen=True, slots=True)
class SchemaRegistrySettings:
    """A Confluent-compatible schema registry: set, every writer frames values in the Confluent
    wire format with the ids it registers (docs/topics.md)."""

    url: str
    """KAFKA_SCHEMA_REGISTRY_URL: the API base, e.g. http://registry:8080/apis/ccompat/v7."""
    username: str | None = None
    """KAFKA_SCHEMA_REGISTRY_USER: HTTP basic auth user (with the password file)."""
    password: Secret | None = None
    """KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE."""
    ca_file: Path | None = None
    """KAFKA_SCHEMA_REGISTRY_CA_FILE: PEM CA bundle for an https registry (default: system CAs)."""
    timeout_seconds: float = 10.0
    """KAFKA_SCHEMA_REGISTRY_TIMEOUT_SECONDS: one HTTP request to the registry, at most."""

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str
    security_protocol: SecurityProtocol
    ssl_ca_file: Path | None
    ssl_cert_file: Path | None
    ssl_key_file: Path | None
    sasl_mechanism: SaslMechanism
    sasl_username: str | None
    sasl_password: Secret | None
    topic_prefix: str
    events_topic: str
    dlq_topic: str
    state_topic: str
    registry_topic: str
    linger_ms: int
    max_batch_bytes: int
    compression: Compression
    request_timeout_ms: int
    schema_registry: SchemaRegistrySettings | None = None
    """Set: registry mode (Confluent wire format); None: Avro single-object encoding."""
    checkpoints_topic: str = ""
    """KAFKA_CHECKPOINTS_TOPIC: the projector's checkpoints (default: the state topic's name
    + `-checkpoints`)."""

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments for any aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol.value,
        }
        if self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
            context = ssl.create_default_context(
                cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None
            )
            if self.ssl_cert_file:
                context.load_cert_chain(
                    str(self.ssl_cert_file), str(self.ssl_key_file) if self.ssl_key_file else None
                )
            kwargs["ssl_context"] = context
        if self.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
            kwargs["sasl_mechanism"] = self.sasl_mechanism.value
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.reveal() if self.sasl_password else None
            )
        return kwargs


@dataclass(frozen=True, slots=True)
class HttpTimeouts:
    """Bounds on one HTTP connection of the processes' servers (ops and read API)."""

    idle_seconds: float = 15.0
    """CUMI_HTTP_IDLE_TIMEOUT_SECONDS: a connection without a complete request header for this
    long is closed: idle between keep-alive requests, or a request header sent by halves."""
    body_seconds: float = 5.0
    """CUMI_HTTP_BODY_TIMEOUT_SECONDS: how long the rest of a request body is read (and dropped:
    no route takes one) after the answer, before the connection is closed."""


DEFAULT_TIMEOUTS = HttpTimeouts()


@dataclass(frozen=True, slots=True)
class ReadApiSettings:
    """The projector's read API listener (docs/operations.md, "The projector's read API")."""

    port: int | None
    """CUMI_READ_API_PORT: a listener of its own; None = served on the ops port (CUMI_METRICS_PORT)
    as before, with the same bind address."""
    host: str
    """CUMI_READ_API_HOST (default: the ops server's address)."""
    tokens: tuple[Secret, ...]
    """CUMI_READ_API_TOKEN_FILE: bearer tokens accepted, one a line (two during a rotation);
    empty = no token required."""
    tls_cert_file: Path | None = None
    """CUMI_READ_API_TLS_CERT_FILE (and _KEY_FILE): HTTPS on the read API's own listener."""
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    """CUMI_READ_API_TLS_CLIENT_CA_FILE: mutual TLS, clients need a certificate from this CA."""


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """What every long-running process (worker, projector) has: one name each."""

    metrics_port: int
    """CUMI_METRICS_PORT: /metrics, health (and the projector's read API unless it has its own)."""
    metrics_host: str
    """CUMI_METRICS_HOST: default 127.0.0.1, or 0.0.0.0 in a Kubernetes pod."""
    http_timeouts: HttpTimeouts
    log_level: str | None
    """CUMI_LOG_LEVEL; None leaves the command line's --log-level in force."""
    shutdown_timeout_seconds: float
    """CUMI_SHUTDOWN_TIMEOUT_SECONDS: how long a stopping process drains."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    queue_size: int
    """CUMI_QUEUE_SIZE: events received but not yet acknowledged by Kafka, at most."""
    metrics_port: int
    metrics_host: str
    log_level: str | None
    """CUMI_LOG_LEVEL; None leaves the command line's --log-level in force."""
    shutdown_timeout_seconds: float
    reconcile_on_start: bool
    http_timeouts: HttpTimeouts
    group_id: str
    """KAFKA_WORKER_GROUP: the consumer group sharing the registry (registry source only)."""
    group_session_timeout_ms: int
    """A member silent this long is dead: its mailboxes move to the others."""
    group_heartbeat_interval_ms: int
    """Members learn of a rebalance at their next heartbeat."""


@dataclass(frozen=True, slots=True)
class Settings:
    cumi: CumiSettings
    credentials: CredentialSettings
    kafka: KafkaSettings
    worker: WorkerSettings

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        source = SettingsSource.load(env, config_file)
        return cls(
            cumi=load_cumi(source),
            credentials=load_credentials(source),
            kafka=load_kafka(source),
            worker=load_worker(source),
        )

    def describe(self) -> dict[str, Any]:
        """Every setting as plain JSON-able values for the start-up log line; secrets as '***'."""
        return {f.name: _describe(getattr(self, f.name)) for f in fields(self)}


def _describe(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _describe(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path | ZoneInfo):
        return str(value)
    return value


def load_cumi(s: SettingsSource) -> CumiSettings:
    server_url = s.url("CUMI_SERVER_URL", ("http", "https"))
    if server_url is None:
        raise ConfigError(
            "CUMI_SERVER_URL is required: the REST base URL, e.g. https://cuc.example.com"
        )
    cometd_url = s.url("CUMI_COMETD_URL", ("http", "https", "ws", "wss"))
    source = s.choice("CUMI_MAILBOX_SOURCE", MailboxSource, MailboxSource.FILE)
    mailboxes = s.path("CUMI_MAILBOXES_FILE")
    if mailboxes is None and source is MailboxSource.FILE:
        raise ConfigError(
            "CUMI_MAILBOXES_FILE is required: a file listing the mailbox aliases "
            "(or CUMI_MAILBOX_SOURCE=registry)"
        )
    return CumiSettings(
        server_url=server_url,
        cometd_url=cometd_url or derive_cometd_url(server_url),
        server_name=s.text("CUMI_SERVER_NAME") or urlsplit(server_url).hostname or server_url,
        tls_verify=s.flag("CUMI_TLS_VERIFY", True),
        tls_ca_file=s.path("CUMI_TLS_CA_FILE"),
        comet_transport=s.choice(
            "CUMI_COMET_TRANSPORT", CometTransport, CometTransport.LONG_POLLING
        ),
        rest_concurrency=s.integer("CUMI_REST_CONCURRENCY", 4, minimum=1, maximum=64),
        rest_timeout_seconds=s.number("CUMI_REST_TIMEOUT_SECONDS", 30.0, minimum=0.0),
        rest_max_attempts=s.integer("CUMI_REST_MAX_ATTEMPTS", 8, minimum=1),
        rest_backoff_base_seconds=s.number("CUMI_REST_BACKOFF_BASE_SECONDS", 0.2, minimum=0.0),
        rest_backoff_max_seconds=s.number("CUMI_REST_BACKOFF_MAX_SECONDS", 30.0, minimum=0.0),
        auth_retry_seconds=s.number("CUMI_AUTH_RETRY_SECONDS", 900.0, minimum=0.0),
        stall_timeout_seconds=s.number("CUMI_STALL_TIMEOUT_SECONDS", 90.0, minimum=0.0),
        subscribe_batch_size=s.integer("CUMI_SUBSCRIBE_BATCH_SIZE", 100, minimum=1, maximum=1000),
        subscribe_batch_bytes=s.integer(
            "CUMI_SUBSCRIBE_BATCH_BYTES", 60_000, minimum=1_024, maximum=1_048_576
        ),
        reuse_subscriptions=s.flag("CUMI_REUSE_SUBSCRIPTIONS", True),
        reconcile_page_size=s.integer("CUMI_RECONCILE_PAGE_SIZE", 100, minimum=1, maximum=1000),
        reconcile_concurrency=s.integer("CUMI_RECONCILE_CONCURRENCY", 2, minimum=1, maximum=64),
        event_time_zone=s.zone("CUMI_EVENT_TIME_ZONE"),
        server_time_zone=s.zone("CUMI_SERVER_TIME_ZONE"),
        mailbox_source=source,
        mailboxes_file=mailboxes,
        dead_letter_repair_interval_seconds=s.number(
            "CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS", 30.0, minimum=0.0
        ),
        server_time_zone_set=s.raw("CUMI_SERVER_TIME_ZONE") is not None,
    )


def load_credentials(s: SettingsSource) -> CredentialSettings:
    kind = s.choice(
        "CUMI_CREDENTIALS_PROVIDER", CredentialsProviderKind, CredentialsProviderKind.FILE
    )
    settings = CredentialSettings(
        provider=kind,
        file=s.path("CUMI_CREDENTIALS_FILE"),
        directory=s.path("CUMI_CREDENTIALS_DIR", directory=True),
        delegate_user=s.text("CUMI_DELEGATE_USER"),
        delegate_password=s.secret_file("CUMI_DELEGATE_PASSWORD_FILE"),
        delegate_token=s.secret_file("CUMI_DELEGATE_TOKEN_FILE"),
    )
    if kind is CredentialsProviderKind.FILE and settings.file is None:
        raise ConfigError("CUMI_CREDENTIALS_FILE is required when CUMI_CREDENTIALS_PROVIDER=file")
    if kind is CredentialsProviderKind.DIRECTORY and settings.directory is None:
        raise ConfigError(
            "CUMI_CREDENTIALS_DIR is required when CUMI_CREDENTIALS_PROVIDER=directory"
        )
    no_delegate_secret = settings.delegate_token is None and (
        settings.delegate_user is None or settings.delegate_password is None
    )
    if kind is CredentialsProviderKind.DELEGATE and no_delegate_secret:
        raise ConfigError(
            "CUMI_DELEGATE_USER and CUMI_DELEGATE_PASSWORD_FILE (or CUMI_DELEGATE_TOKEN_FILE) "
            "are required when CUMI_CREDENTIALS_PROVIDER=delegate"
        )
    return settings


def load_kafka(s: SettingsSource) -> KafkaSettings:
    bootstrap = s.required(
        "KAFKA_BOOTSTRAP_SERVERS", "comma-separated host:port list of Kafka brokers"
    )
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port…], got {bootstrap!r}"
            )
    protocol = s.choice("KAFKA_SECURITY_PROTOCOL", SecurityProtocol, SecurityProtocol.PLAINTEXT)
    username = s.text("KAFKA_SASL_USERNAME")
    password = s.secret_file("KAFKA_SASL_PASSWORD_FILE")
    if protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL) and (
        username is None or password is None
    ):
        raise ConfigError(
            f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE are required when "
            f"KAFKA_SECURITY_PROTOCOL={protocol.value}"
        )
    cert, key = s.path("KAFKA_SSL_CERT_FILE"), s.path("KAFKA_SSL_KEY_FILE")
    if key is not None and cert is None:
        raise ConfigError("KAFKA_SSL_KEY_FILE needs KAFKA_SSL_CERT_FILE (the client certificate)")
    prefix = s.text("KAFKA_TOPIC_PREFIX", "") or ""
    compression = s.choice("KAFKA_COMPRESSION_TYPE", Compression, Compression.NONE)
    _check_compression(compression)
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol=protocol,
        ssl_ca_file=s.path("KAFKA_SSL_CA_FILE"),
        ssl_cert_file=cert,
        ssl_key_file=key,
        sasl_mechanism=s.choice("KAFKA_SASL_MECHANISM", SaslMechanism, SaslMechanism.PLAIN),
        sasl_username=username,
        sasl_password=password,
        topic_prefix=prefix,
        events_topic=prefix + _topic(s, "KAFKA_EVENTS_TOPIC", "mailbox-events"),
        dlq_topic=prefix + _topic(s, "KAFKA_DLQ_TOPIC", "mailbox-events-dlq"),
        state_topic=prefix + _topic(s, "KAFKA_STATE_TOPIC", "mailbox-state"),
        registry_topic=prefix + _topic(s, "KAFKA_REGISTRY_TOPIC", "mailbox-registry"),
        linger_ms=s.integer("KAFKA_LINGER_MS", 5, maximum=10_000),
        max_batch_bytes=s.integer("KAFKA_BATCH_BYTES", 262_144, minimum=1024),
        compression=compression,
        request_timeout_ms=s.integer("KAFKA_REQUEST_TIMEOUT_MS", 40_000, minimum=1000),
        schema_registry=load_schema_registry(s),
        checkpoints_topic=_checkpoints_topic(s, prefix),
    )


def _checkpoints_topic(s: SettingsSource, prefix: str) -> str:
    named = s.text("KAFKA_CHECKPOINTS_TOPIC")
    if named:
        return prefix + _topic(s, "KAFKA_CHECKPOINTS_TOPIC", named)
    return prefix + _topic(s, "KAFKA_STATE_TOPIC", "mailbox-state") + "-checkpoints"


def load_schema_registry(s: SettingsSource) -> SchemaRegistrySettings | None:
    """KAFKA_SCHEMA_REGISTRY_*; None (single-object encoding) without a URL."""
    url = s.url("KAFKA_SCHEMA_REGISTRY_URL", ("http", "https"))
    user = s.text("KAFKA_SCHEMA_REGISTRY_USER")
    password = s.secret_file("KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE")
    ca_file = s.path("KAFKA_SCHEMA_REGISTRY_CA_FILE")
    timeout = s.number("KAFKA_SCHEMA_REGISTRY_TIMEOUT_SECONDS", 10.0, minimum=0.0)
    if url is None:
        given = [
            n for n, v in (("USER", user), ("PASSWORD_FILE", password), ("CA_FILE", ca_file)) if v
        ]
        if given:
            raise ConfigError(
                f"KAFKA_SCHEMA_REGISTRY_{given[0]} is set but KAFKA_SCHEMA_REGISTRY_URL is not"
            )
        return None
    if (user is None) != (password is None):
        raise ConfigError(
            "KAFKA_SCHEMA_REGISTRY_USER and KAFKA_SCHEMA_REGISTRY_PASSWORD_FILE go together "
            "(HTTP basic auth)"
        )
    return SchemaRegistrySettings(url, user, password, ca_file, timeout)


def _topic(s: SettingsSource, name: str, default: str) -> str:
    value = s.text(name, default) or default
    if len(value) > 200 or not all(c.isalnum() or c in "._-" for c in value):
        raise ConfigError(
            f"{name} must be a Kafka topic name ([a-zA-Z0-9._-], ≤ 200), got {value!r}"
        )
    return value


def _check_compression(compression: Compression) -> None:
    if compression is Compression.NONE:
        return
    # aiokafka knows which optional codec libraries are importable
    available = {
        Compression.GZIP: codec.has_gzip,
        Compression.SNAPPY: codec.has_snappy,
        Compression.LZ4: codec.has_lz4,
        Compression.ZSTD: codec.has_zstd,
    }[compression]()
    if not available:
        raise ConfigError(
            f"KAFKA_COMPRESSION_TYPE={compression.value} needs a codec library that is not "
            "installed (gzip always works)"
        )


def load_process(s: SettingsSource) -> ProcessSettings:
    """The settings every process shares, and nothing else: a bad worker-only variable does not
    stop a projector sharing its environment."""
    level = (s.text("CUMI_LOG_LEVEL") or "").upper() or None
    if level is not None and level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"CUMI_LOG_LEVEL must be DEBUG|INFO|WARNING|ERROR|CRITICAL, got {level!r}"
        )
    return ProcessSettings(
        metrics_port=s.integer("CUMI_METRICS_PORT", 9102, maximum=65535),
        metrics_host=s.text("CUMI_METRICS_HOST") or default_bind_host(s),
        http_timeouts=HttpTimeouts(
            idle_seconds=s.number("CUMI_HTTP_IDLE_TIMEOUT_SECONDS", 15.0),
            body_seconds=s.number("CUMI_HTTP_BODY_TIMEOUT_SECONDS", 5.0),
        ),
        log_level=level,
        shutdown_timeout_seconds=s.number("CUMI_SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=0.0),
    )


def default_bind_host(s: SettingsSource) -> str:
    """Every address in a Kubernetes pod (probes and Services come from outside the pod), the
    loopback anywhere else: nothing is reachable from the network unless configured so."""
    return "0.0.0.0" if s.text(_IN_KUBERNETES) else "127.0.0.1"


def load_read_api(s: SettingsSource, process: ProcessSettings) -> ReadApiSettings:
    """The read API's listener, bearer tokens and TLS files (checked together here)."""
    port = s.integer("CUMI_READ_API_PORT", -1, minimum=0, maximum=65535)
    # unset, or the ops port itself: one listener serves both, as before the read API had its own
    shared = port < 0 or (port == process.metrics_port and port != 0)
    cert, key = s.path("CUMI_READ_API_TLS_CERT_FILE"), s.path("CUMI_READ_API_TLS_KEY_FILE")
    client_ca = s.path("CUMI_READ_API_TLS_CLIENT_CA_FILE")
    if (cert is None) != (key is None):
        raise ConfigError("CUMI_READ_API_TLS_CERT_FILE and CUMI_READ_API_TLS_KEY_FILE go together")
    if client_ca is not None and cert is None:
        raise ConfigError(
            "CUMI_READ_API_TLS_CLIENT_CA_FILE needs CUMI_READ_API_TLS_CERT_FILE/_KEY_FILE: "
            "mutual TLS is TLS with client certificates"
        )
    if cert is not None and shared:
        raise ConfigError(
            "CUMI_READ_API_TLS_* needs CUMI_READ_API_PORT, another port than CUMI_METRICS_PORT: "
            "TLS is served on the read API's own listener (probes and /metrics stay plain HTTP)"
        )
    return ReadApiSettings(
        port=None if shared else port,
        host=s.text("CUMI_READ_API_HOST") or process.metrics_host,
        tokens=_tokens(s, "CUMI_READ_API_TOKEN_FILE"),
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=client_ca,
    )


def _tokens(s: SettingsSource, name: str) -> tuple[Secret, ...]:
    """The non-empty lines of a token file (a Secret key mounted as a file)."""
    secret = s.secret_file(name)
    if secret is None:
        return ()
    tokens = tuple(Secret(line.strip()) for line in secret.reveal().splitlines() if line.strip())
    if any(len(t.reveal()) < 16 or not t.reveal().isascii() for t in tokens):
        raise ConfigError(f"{name}: every token must be at least 16 ASCII characters")
    return tokens


def load_worker(s: SettingsSource) -> WorkerSettings:
    process = load_process(s)
    return WorkerSettings(
        queue_size=s.integer("CUMI_QUEUE_SIZE", 10_000, minimum=1),
        metrics_port=process.metrics_port,
        metrics_host=process.metrics_host,
        log_level=process.log_level,
        shutdown_timeout_seconds=process.shutdown_timeout_seconds,
        reconcile_on_start=s.flag("CUMI_RECONCILE_ON_START", True),
        http_timeouts=process.http_timeouts,
        **_worker_group(s),
    )


def _worker_group(s: SettingsSource) -> dict[str, Any]:
    group = s.text("KAFKA_WORKER_GROUP", "cumi-ingest-workers") or "cumi-ingest-workers"
    # the broker's group.min/max.session.timeout.ms (6 s / 30 min by default) bound this too
    session = s.integer("KAFKA_WORKER_SESSION_TIMEOUT_MS", 10_000, minimum=1000)
    heartbeat = s.integer("KAFKA_WORKER_HEARTBEAT_INTERVAL_MS", 1_000, minimum=100)
    if heartbeat * 3 > session:
        raise ConfigError(
            f"KAFKA_WORKER_HEARTBEAT_INTERVAL_MS ({heartbeat}) must be at most a third of "
            f"KAFKA_WORKER_SESSION_TIMEOUT_MS ({session})"
        )
    return {
        "group_id": group,
        "group_session_timeout_ms": session,
        "group_heartbeat_interval_ms": heartbeat,
    }
