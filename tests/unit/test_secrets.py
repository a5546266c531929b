"""Secrets in reprs, the start-up settings line and error messages (tracebacks included): a planted
secret in every credential setting never shows. The processes themselves (logs at DEBUG, /metrics,
dead letters, read API) are covered by tests/integration/test_security.py."""

from __future__ import annotations

import base64
import json
import logging
import traceback
from pathlib import Path

import pytest

from ingest.cumi.credentials import Credential, DirectoryCredentials, FileCredentials
from ingest.errors import ConfigError, IngestError
from ingest.settings import Secret, Settings

SECRET = "PLANTED-3b1f9c2e-secret"
TOKEN = "PLANTED-token-77aa"


def shown(error: BaseException) -> str:
    """Everything a log line with exc_info would print about `error`."""
    return "".join(traceback.format_exception(error))


def assert_hidden(text: str) -> None:
    basic = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    for secret in (SECRET, TOKEN, basic):
        assert secret not in text, f"{secret} shown in: {text[:300]}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Every setting that holds a secret, holding one; otherwise valid."""
    (tmp_path / "mailboxes.txt").write_text("alice\n")
    (tmp_path / "users.json").write_text(json.dumps({"alice": {"password": SECRET}}))
    for name, secret in (("delegate", SECRET), ("token", TOKEN), ("sasl", SECRET)):
        (tmp_path / name).write_text(secret)
    return {
        "CUMI_SERVER_URL": "https://cuc.example.com",
        "CUMI_MAILBOXES_FILE": str(tmp_path / "mailboxes.txt"),
        "CUMI_CREDENTIALS_FILE": str(tmp_path / "users.json"),
        "CUMI_DELEGATE_USER": "svc",
        "CUMI_DELEGATE_PASSWORD_FILE": str(tmp_path / "delegate"),
        "CUMI_DELEGATE_TOKEN_FILE": str(tmp_path / "token"),
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "ingest",
        "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "sasl"),
    }


class TestReprs:
    """Secrets print as *** however they are formatted or logged."""

    def test_secret_and_credential(self, caplog: pytest.LogCaptureFixture) -> None:
        secret = Secret(SECRET)
        credential = Credential.basic("alice", SECRET)
        bearer = Credential.bearer(TOKEN)
        texts = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret]  # noqa: UP031
        texts += [repr(credential), str(bearer), repr([credential, bearer])]
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("test").debug("credential %s %r", credential, bearer)
        texts.append(caplog.text)
        for text in texts:
            assert_hidden(text)
        assert credential.headers()["Authorization"].startswith("Basic ")  # still usable

    def test_settings_and_their_startup_line(self, env: dict[str, str]) -> None:
        settings = Settings.load(env)
        assert settings.kafka.sasl_password == Secret(SECRET)  # loaded, not lost
        assert_hidden(repr(settings))
        assert_hidden(json.dumps(settings.describe()))
        assert_hidden(repr(settings.kafka.client_kwargs().get("ssl_context")))


class TestErrorMessages:
    """Configuration and credential errors explain themselves without quoting a secret."""

    def test_invalid_setting_next_to_loaded_secrets(self, env: dict[str, str]) -> None:
        env["KAFKA_SECURITY_PROTOCOL"] = "SASL_TLS"
        with pytest.raises(ConfigError) as caught:
            Settings.load(env)
        assert_hidden(shown(caught.value))

    @pytest.mark.parametrize(
        "url",
        [
            f"https://admin:{SECRET}@cuc.example.com",
            f"https://admin:{SECRET}@cuc.example.com:notaport",
            f"admin:{SECRET}@cuc.example.com",
        ],
    )
    def test_url_with_credentials_is_refused_unquoted(self, env: dict[str, str], url: str) -> None:
        # accepted, it would be logged in the start-up line (and aiohttp refuses to combine it
        # with the per-mailbox Authorization header)
        env["CUMI_SERVER_URL"] = url
        with pytest.raises(ConfigError, match="must not carry credentials") as caught:
            Settings.load(env)
        assert_hidden(shown(caught.value))
        env["CUMI_SERVER_URL"], env["CUMI_COMETD_URL"] = "https://cuc", url.replace("https", "wss")
        with pytest.raises(ConfigError, match="CUMI_COMETD_URL must not carry credentials"):
            Settings.load(env)

    @pytest.mark.parametrize(
        "content",
        [
            json.dumps({"alice": {"pasword": SECRET}}),  # misspelt key
            json.dumps({"alice": {"password": 7, "token": 8, "note": SECRET}}),
            json.dumps({"alice": [SECRET]}),
            '{"alice": {"password": "' + SECRET,  # truncated JSON
            f"alice: {SECRET}",  # not JSON at all
            json.dumps([SECRET]),
        ],
    )
    async def test_bad_credentials_file(self, tmp_path: Path, content: str) -> None:
        path = tmp_path / "users.json"
        path.write_text(content)
        with pytest.raises(IngestError) as caught:
            await FileCredentials(path).credential_for("alice")
        assert_hidden(shown(caught.value))

    @pytest.mark.parametrize("content", ['{"password": ' + SECRET, '{"token": 5, "x": "' + SECRET])
    async def test_bad_credentials_directory_entry(self, tmp_path: Path, content: str) -> None:
        (tmp_path / "alice").write_text(content)
        with pytest.raises(IngestError) as caught:
            await DirectoryCredentials(tmp_path).credential_for("alice")
        assert_hidden(shown(caught.value))

    @pytest.mark.parametrize(
        ("suffix", "content"),
        [
            (".toml", f'CUMI_SERVER_URL = "https://cuc"\nKAFKA_SASL_PASSWORD = {SECRET}\n'),
            (".json", '{"CUMI_SERVER_URL": "https://cuc", "KAFKA_SASL_PASSWORD": ' + SECRET),
            (".toml", f'[secrets]\nKAFKA_SASL_PASSWORD = "{SECRET}"\n'),
        ],
    )
    def test_broken_config_file(self, tmp_path: Path, suffix: str, content: str) -> None:
        path = tmp_path / f"settings{suffix}"
        path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            Settings.load({}, config_file=path)
        assert_hidden(shown(caught.value))
