"""The HTTP listeners' settings: where they bind by default, the read API's own listener, its
tokens and TLS files, connection timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.projector import ProjectorSettings
from ingest.settings import (
    HttpTimeouts,
    ReadApiSettings,
    Settings,
    SettingsSource,
    load_process,
    load_read_api,
)

IN_A_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
TOKEN = "0123456789abcdef-token"


def read_api(env: dict[str, str]) -> ReadApiSettings:
    source = SettingsSource.load(env)
    return load_read_api(source, load_process(source))


class TestBinding:
    """Loopback by default, every address in a Kubernetes pod, the setting wins over both."""

    @pytest.mark.parametrize(
        ("env", "host"),
        [
            ({}, "127.0.0.1"),
            (IN_A_POD, "0.0.0.0"),
            ({"CUMI_METRICS_HOST": "0.0.0.0"}, "0.0.0.0"),
            ({**IN_A_POD, "CUMI_METRICS_HOST": "127.0.0.1"}, "127.0.0.1"),
        ],
    )
    def test_ops_and_read_api_hosts(self, env: dict[str, str], host: str) -> None:
        assert load_process(SettingsSource.load(env)).metrics_host == host
        assert read_api(env).host == host
        kafka = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
        assert ProjectorSettings.load({**env, **kafka}).http_host == host

    def test_the_worker_binds_the_same_way(self, tmp_path: Path) -> None:
        (tmp_path / "m.txt").write_text("alice\n")
        (tmp_path / "c.json").write_text('{"alice": {"password": "pw"}}')
        env = {
            "CUMI_SERVER_URL": "https://cuc.example.com",
            "CUMI_MAILBOXES_FILE": str(tmp_path / "m.txt"),
            "CUMI_CREDENTIALS_FILE": str(tmp_path / "c.json"),
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        }
        assert Settings.load(env).worker.metrics_host == "127.0.0.1"
        assert Settings.load({**env, **IN_A_POD}).worker.metrics_host == "0.0.0.0"

    def test_the_read_api_may_bind_elsewhere(self) -> None:
        env = {"CUMI_READ_API_PORT": "9103", "CUMI_READ_API_HOST": "10.1.2.3"}
        assert (read_api(env).host, read_api(env).port) == ("10.1.2.3", 9103)


class TestReadApiListener:
    """Unset or the ops port: one listener; any other port: a listener of its own."""

    @pytest.mark.parametrize(
        ("env", "port"),
        [
            ({}, None),
            ({"CUMI_READ_API_PORT": "9102"}, None),
            ({"CUMI_READ_API_PORT": "9103"}, 9103),
            ({"CUMI_READ_API_PORT": "0", "CUMI_METRICS_PORT": "0"}, 0),
        ],
    )
    def test_port(self, env: dict[str, str], port: int | None) -> None:
        assert read_api(env).port == port

    def test_tokens_one_a_line(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text(f"{TOKEN}\n\n{TOKEN[::-1]}\n")
        tokens = read_api({"CUMI_READ_API_TOKEN_FILE": str(path)}).tokens
        assert [t.reveal() for t in tokens] == [TOKEN, TOKEN[::-1]]
        assert TOKEN not in repr(read_api({"CUMI_READ_API_TOKEN_FILE": str(path)}))

    @pytest.mark.parametrize(("content", "error"), [("short\n", "at least 16"), ("\n", "is empty")])
    def test_weak_or_empty_tokens_are_refused(
        self, tmp_path: Path, content: str, error: str
    ) -> None:
        path = tmp_path / "token"
        path.write_text(content)
        with pytest.raises(ConfigError, match=error):
            read_api({"CUMI_READ_API_TOKEN_FILE": str(path)})

    def test_tls_needs_its_own_port_and_both_files(self, tmp_path: Path) -> None:
        cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
        cert.write_text("x")
        key.write_text("x")
        files = {"CUMI_READ_API_TLS_CERT_FILE": str(cert), "CUMI_READ_API_TLS_KEY_FILE": str(key)}
        with pytest.raises(ConfigError, match="needs CUMI_READ_API_PORT"):
            read_api(files)
        with pytest.raises(ConfigError, match="go together"):
            read_api({"CUMI_READ_API_PORT": "9103", "CUMI_READ_API_TLS_CERT_FILE": str(cert)})
        with pytest.raises(ConfigError, match="mutual TLS"):
            read_api({"CUMI_READ_API_PORT": "9103", "CUMI_READ_API_TLS_CLIENT_CA_FILE": str(key)})
        assert read_api({**files, "CUMI_READ_API_PORT": "9103"}).tls_cert_file == cert


class TestTimeouts:
    def test_defaults_and_settings(self) -> None:
        assert load_process(SettingsSource.load({})).http_timeouts == HttpTimeouts(15.0, 5.0)
        env = {"CUMI_HTTP_IDLE_TIMEOUT_SECONDS": "2.5", "CUMI_HTTP_BODY_TIMEOUT_SECONDS": "1"}
        assert load_process(SettingsSource.load(env)).http_timeouts == HttpTimeouts(2.5, 1.0)
        with pytest.raises(ConfigError, match="CUMI_HTTP_IDLE_TIMEOUT_SECONDS"):
            load_process(SettingsSource.load({"CUMI_HTTP_IDLE_TIMEOUT_SECONDS": "0"}))
