"""Settings: names, defaults, validation errors that name the setting, secrets that never show."""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ingest.errors import ConfigError
from ingest.settings import (
    CometTransport,
    CredentialsProviderKind,
    Secret,
    SecurityProtocol,
    Settings,
    derive_cometd_url,
)


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    mailboxes = tmp_path / "mailboxes.txt"
    mailboxes.write_text("alice\nbob\n")
    creds = tmp_path / "users.json"
    creds.write_text(json.dumps({"alice": {"password": "pw"}}))
    return {
        "CUMI_SERVER_URL": "https://cuc.example.com",
        "CUMI_MAILBOXES_FILE": str(mailboxes),
        "CUMI_CREDENTIALS_FILE": str(creds),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    }


class TestDefaults:
    """A minimal environment gives the documented defaults."""

    def test_defaults(self, base_env: dict[str, str]) -> None:
        s = Settings.load(base_env)
        assert s.cumi.cometd_url == "https://cuc.example.com:7443/vmevents/cometd"
        assert s.cumi.server_name == "cuc.example.com"
        assert s.cumi.tls_verify is True
        assert s.cumi.rest_concurrency == 4
        assert s.cumi.comet_transport is CometTransport.LONG_POLLING
        assert s.cumi.event_time_zone == ZoneInfo("UTC")
        assert s.credentials.provider is CredentialsProviderKind.FILE
        assert s.kafka.security_protocol is SecurityProtocol.PLAINTEXT
        assert s.kafka.events_topic == "mailbox-events"
        assert s.kafka.dlq_topic == "mailbox-events-dlq"
        assert s.worker.metrics_port == 9102
        assert s.cumi.dead_letter_repair_interval_seconds == 30.0
        assert s.cumi.server_time_zone_set is False

    @pytest.mark.parametrize(
        ("server", "expected"),
        [
            ("http://cuc:8080", "http://cuc:7080/vmevents/cometd"),
            ("https://cuc.example.com/", "https://cuc.example.com:7443/vmevents/cometd"),
            ("http://[::1]:80", "http://[::1]:7080/vmevents/cometd"),
        ],
    )
    def test_cometd_url_is_derived_from_the_rest_url(self, server: str, expected: str) -> None:
        assert derive_cometd_url(server) == expected

    def test_topic_prefix_applies_to_every_topic(self, base_env: dict[str, str]) -> None:
        env = base_env | {"KAFKA_TOPIC_PREFIX": "prod.", "KAFKA_DLQ_TOPIC": "dead"}
        k = Settings.load(env).kafka
        assert (k.events_topic, k.dlq_topic, k.state_topic) == (
            "prod.mailbox-events",
            "prod.dead",
            "prod.mailbox-state",
        )


class TestSources:
    """A config file (JSON or TOML) holds the same names; the environment overrides it."""

    def test_toml_file_and_env_override(self, base_env: dict[str, str], tmp_path: Path) -> None:
        config = tmp_path / "worker.toml"
        config.write_text(
            'CUMI_REST_CONCURRENCY = 2\nCUMI_SERVER_NAME = "from-file"\nCUMI_TLS_VERIFY = false\n'
        )
        env = base_env | {"CUMI_CONFIG": str(config), "CUMI_SERVER_NAME": "from-env"}
        s = Settings.load(env)
        assert s.cumi.rest_concurrency == 2
        assert s.cumi.tls_verify is False
        assert s.cumi.server_name == "from-env"

    def test_json_file_given_explicitly(self, base_env: dict[str, str], tmp_path: Path) -> None:
        config = tmp_path / "worker.json"
        config.write_text(json.dumps({"cumi_queue_size": 77}))
        assert Settings.load(base_env, config_file=config).worker.queue_size == 77

    def test_nested_file_is_rejected(self, base_env: dict[str, str], tmp_path: Path) -> None:
        config = tmp_path / "worker.toml"
        config.write_text("[cumi]\nserver_url = 'x'\n")
        with pytest.raises(ConfigError, match="flat"):
            Settings.load(base_env, config_file=config)


class TestValidation:
    """Each bad value fails at load time with an error naming the setting."""

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("CUMI_SERVER_URL", "ftp://cuc"),
            ("CUMI_REST_CONCURRENCY", "0"),
            ("CUMI_REST_CONCURRENCY", "four"),
            ("CUMI_REST_TIMEOUT_SECONDS", "-1"),
            ("CUMI_TLS_VERIFY", "maybe"),
            ("CUMI_EVENT_TIME_ZONE", "Mars/Olympus"),
            ("CUMI_COMET_TRANSPORT", "carrier-pigeon"),
            ("CUMI_TLS_CA_FILE", "/nonexistent/ca.pem"),
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
            ("KAFKA_SECURITY_PROTOCOL", "TLS"),
            ("KAFKA_EVENTS_TOPIC", "bad topic"),
            ("CUMI_METRICS_PORT", "70000"),
            ("CUMI_LOG_LEVEL", "LOUD"),
            ("CUMI_CREDENTIALS_PROVIDER", "vault"),
            ("CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS", "0"),
            ("CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS", "soon"),
        ],
    )
    def test_bad_value_names_the_setting(
        self, base_env: dict[str, str], name: str, value: str
    ) -> None:
        with pytest.raises(ConfigError, match=name):
            Settings.load(base_env | {name: value})

    @pytest.mark.parametrize(
        "missing", ["CUMI_SERVER_URL", "KAFKA_BOOTSTRAP_SERVERS", "CUMI_MAILBOXES_FILE"]
    )
    def test_required_setting(self, base_env: dict[str, str], missing: str) -> None:
        env = {k: v for k, v in base_env.items() if k != missing}
        with pytest.raises(ConfigError, match=missing):
            Settings.load(env)

    def test_delegate_needs_a_password_file(self, base_env: dict[str, str]) -> None:
        env = base_env | {"CUMI_CREDENTIALS_PROVIDER": "delegate", "CUMI_DELEGATE_USER": "svc"}
        with pytest.raises(ConfigError, match="CUMI_DELEGATE_PASSWORD_FILE"):
            Settings.load(env)

    def test_sasl_needs_credentials(self, base_env: dict[str, str]) -> None:
        with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME"):
            Settings.load(base_env | {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})


class TestSecrets:
    """Secrets are read from *_FILE settings and never appear in repr or describe()."""

    def test_secret_repr(self) -> None:
        secret = Secret("hunter2")
        assert "hunter2" not in repr(secret) + str(secret) + f"{secret}"
        assert secret.reveal() == "hunter2"

    def test_describe_redacts(self, base_env: dict[str, str], tmp_path: Path) -> None:
        pw, sasl = tmp_path / "pw", tmp_path / "sasl"
        pw.write_text("delegate-pass\n")
        sasl.write_text("sasl-pass")
        env = base_env | {
            "CUMI_CREDENTIALS_PROVIDER": "delegate",
            "CUMI_DELEGATE_USER": "svc",
            "CUMI_DELEGATE_PASSWORD_FILE": str(pw),
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "kuser",
            "KAFKA_SASL_PASSWORD_FILE": str(sasl),
        }
        s = Settings.load(env)
        assert s.credentials.delegate_password == Secret("delegate-pass")
        shown = json.dumps(s.describe()) + repr(s)
        assert "delegate-pass" not in shown and "sasl-pass" not in shown
        assert s.describe()["credentials"]["delegate_password"] == "***"
        assert s.kafka.client_kwargs()["sasl_plain_password"] == "sasl-pass"

    def test_bad_value_error_does_not_echo_file_content(
        self, base_env: dict[str, str], tmp_path: Path
    ) -> None:
        empty = tmp_path / "empty"
        empty.write_text("   \n")
        env = base_env | {"CUMI_CREDENTIALS_PROVIDER": "delegate", "CUMI_DELEGATE_USER": "svc"}
        with pytest.raises(ConfigError, match=r"CUMI_DELEGATE_PASSWORD_FILE.*empty"):
            Settings.load(env | {"CUMI_DELEGATE_PASSWORD_FILE": str(empty)})


class TestProjectorSettings:
    """The projector reads only its own settings and the shared process ones."""

    @pytest.mark.parametrize(
        "bad",
        [
            {"CUMI_QUEUE_SIZE": "lots"},
            {"KAFKA_WORKER_HEARTBEAT_INTERVAL_MS": "9000"},
            {"CUMI_SERVER_URL": "not a url"},
        ],
    )
    def test_a_bad_worker_variable_does_not_stop_the_projector(self, bad: dict[str, str]) -> None:
        from ingest.projector import ProjectorSettings  # noqa: PLC0415 - aiokafka only here

        env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "CUMI_METRICS_PORT": "9200", **bad}
        settings = ProjectorSettings.load(env)
        assert settings.http_port == 9200
        with pytest.raises(ConfigError):
            Settings.load(env)

    def test_shared_settings_are_still_checked(self) -> None:
        from ingest.projector import ProjectorSettings  # noqa: PLC0415 - aiokafka only here

        env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "CUMI_LOG_LEVEL": "chatty"}
        with pytest.raises(ConfigError, match="CUMI_LOG_LEVEL"):
            ProjectorSettings.load(env)
