"""Security: certificates are verified by default (CUMI REST, CometD and Kafka, each against a
real TLS server with a certificate from an unknown CA), and planted secrets never show up in what
the processes expose — logs at DEBUG, /metrics, dead letters, the event log, the read API."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from chaos.observe import TopicReader
from chaos.processes import Service
from fixtures.producing import wait_committed
from fixtures.secure_kafka import SecureBroker
from fixtures.simulator import MakeSimulator
from fixtures.tls import TlsFiles
from fixtures.worker import decode_all, fold_records, read_topic, running_worker, settle, worker_env

from ingest.cumi.credentials import Credential
from ingest.cumi.rest import CumiRestClient
from ingest.cumi.session import CometSession
from ingest.errors import TransportError
from ingest.eventlog.topics import TopicNames, TopicSpec, ensure_topics
from ingest.ops.backoff import Backoff
from ingest.settings import CometTransport, Settings, SettingsSource, load_kafka
from ingest.simulator import Simulator
from ingest.simulator.comet import bayeux_message, channel_of
from ingest.state.projection import diff_states

pytestmark = pytest.mark.integration


# -- TLS to the CUMI server ------------------------------------------------------------------------


def cumi_settings(sim: Simulator, tmp_path: Path, **overrides: str) -> Settings:
    mailboxes = tmp_path / "mailboxes.txt"
    mailboxes.write_text("\n".join(sim.accounts) + "\n")
    users = tmp_path / "users.json"
    sim.accounts.write(users)
    env = {
        "CUMI_SERVER_URL": sim.base_url,
        "CUMI_COMETD_URL": sim.cometd_url,
        "CUMI_MAILBOXES_FILE": str(mailboxes),
        "CUMI_CREDENTIALS_FILE": str(users),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        **overrides,
    }
    return Settings.load(env)


async def ask_rest(settings: Settings, sim: Simulator) -> str:
    """requestnotification for the first mailbox with the worker's TLS settings."""
    alias = next(iter(sim.accounts))
    async with CumiRestClient(
        settings.cumi.server_url,
        ssl_context=settings.cumi.ssl_context(),
        max_attempts=2,
        timeout_seconds=10,
        backoff=Backoff(0.05, 0.1),
    ) as rest:
        return await rest.request_notification(Credential.basic(alias, sim.users[alias]))


async def open_comet(settings: Settings, transport: CometTransport) -> None:
    async def ignore(events: list[dict[str, Any]], received: float) -> None:
        return None

    session = CometSession(
        settings.cumi.cometd_url,
        ignore,
        transport=transport,
        ssl_context=settings.cumi.ssl_context(),
        request_timeout=10,
    )
    async with session:
        assert session.client_id


class TestCumiTls:
    """The simulator on HTTPS with a certificate from a CA nobody trusts."""

    async def test_refused_by_default_before_any_credential_is_sent(
        self, make_simulator: MakeSimulator, tls_files: TlsFiles, tmp_path: Path
    ) -> None:
        sim = await make_simulator(ssl_context=tls_files.server_context())
        assert sim.base_url.startswith("https://")
        settings = cumi_settings(sim, tmp_path)
        assert settings.cumi.tls_verify  # the default
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await ask_rest(settings, sim)
        for transport in CometTransport:
            with pytest.raises(TransportError):
                await open_comet(settings, transport)
        # the handshake failed first: no request (so no Authorization header) reached the server
        assert sim.stats.rest_requests == 0
        assert sim.stats.handshakes == 0

    async def test_refused_for_a_name_the_certificate_does_not_carry(
        self, make_simulator: MakeSimulator, tls_files: TlsFiles, tmp_path: Path
    ) -> None:
        sim = await make_simulator(ssl_context=tls_files.server_context())
        localhost = sim.base_url.replace("127.0.0.1", "localhost")
        settings = cumi_settings(
            sim, tmp_path, CUMI_SERVER_URL=localhost, CUMI_TLS_CA_FILE=str(tls_files.ca)
        )
        with pytest.raises(TransportError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            await ask_rest(settings, sim)
        assert sim.stats.rest_requests == 0

    async def test_accepted_with_its_ca(
        self, make_simulator: MakeSimulator, tls_files: TlsFiles, tmp_path: Path
    ) -> None:
        sim = await make_simulator(ssl_context=tls_files.server_context())
        settings = cumi_settings(sim, tmp_path, CUMI_TLS_CA_FILE=str(tls_files.ca))
        assert await ask_rest(settings, sim)
        for transport in CometTransport:
            await open_comet(settings, transport)
        assert sim.stats.handshakes == 2

    async def test_worker_end_to_end_over_tls(
        self,
        make_simulator: MakeSimulator,
        tls_files: TlsFiles,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=20, ssl_context=tls_files.server_context())
        env = worker_env(
            sim, kafka_bootstrap, fresh_topics, tmp_path, CUMI_TLS_CA_FILE=str(tls_files.ca)
        )
        async with running_worker(env) as worker:
            sim.emit(500)
            await settle(worker, sim)
            decoded = decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
        assert diff_states(sim.truth(), fold_records(decoded)) == []
        assert sim.stats.emitted_total == 500


# -- TLS to Kafka ----------------------------------------------------------------------------------


class TestKafkaTls:
    """The Kafka client settings against a real broker's SSL listener."""

    async def test_refused_by_default_accepted_with_its_ca(
        self, ssl_broker: SecureBroker, tls_files: TlsFiles
    ) -> None:
        base = {
            "KAFKA_BOOTSTRAP_SERVERS": ssl_broker.secure_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
        }
        untrusting = load_kafka(SettingsSource(base)).client_kwargs()
        assert untrusting["ssl_context"].verify_mode.name == "CERT_REQUIRED"
        assert untrusting["ssl_context"].check_hostname
        producer = AIOKafkaProducer(request_timeout_ms=5000, **untrusting)
        with pytest.raises(KafkaConnectionError):
            await producer.start()
        await producer.stop()

        trusting = load_kafka(
            SettingsSource({**base, "KAFKA_SSL_CA_FILE": str(tls_files.ca)})
        ).client_kwargs()
        topic = f"tls-{uuid.uuid4().hex[:8]}"
        await ensure_topics(
            ssl_broker.secure_bootstrap,
            [TopicSpec(topic, partitions=1)],
            **_without_bootstrap(trusting),
        )
        producer = AIOKafkaProducer(**trusting)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"over tls", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **trusting)
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert record.value == b"over tls"


def _without_bootstrap(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "bootstrap_servers"}


# -- secrets ---------------------------------------------------------------------------------------

PLANTED_SASL = "PLANTED-sasl-" + uuid.uuid4().hex
PLANTED_BEARER = "PLANTED-bearer-" + uuid.uuid4().hex
PLANTED_WRONG = "PLANTED-wrong-" + uuid.uuid4().hex


def forms(login: str, secret: str) -> list[str]:
    """A secret as it could leak: itself, and inside a Basic Authorization header."""
    token = base64.b64encode(f"{login}:{secret}".encode()).decode()
    return [secret, token, token.rstrip("=")]


def planted_secrets(sim: Simulator) -> list[str]:
    found = [PLANTED_SASL, PLANTED_BEARER, PLANTED_WRONG]
    for alias, user in sim.accounts.items():
        found += [*forms(alias, user.password), user.token]
    found += forms(sim.delegate.username, sim.delegate.password)
    found += forms("alice", PLANTED_WRONG)
    return found


def leaks(haystacks: Iterable[tuple[str, str | bytes]], secrets: list[str]) -> list[str]:
    found = []
    for where, text in haystacks:
        data = text.encode() if isinstance(text, str) else text
        found += [f"{secret[:12]}… in {where}" for secret in secrets if secret.encode() in data]
    return found


class Deployment:
    """Three workers and a projector, every credential setting holding a known secret:
    - files-worker: per-user credentials, one user by Bearer token, one with a wrong (planted)
      password and one with an unknown (planted) token — both refused with 401;
    - delegate-worker: the delegate account's password;
    - sasl-worker: SASL_PLAINTEXT against a broker without SASL (it never gets in);
    - all four hold a planted SASL password (unused with PLAINTEXT) and log at DEBUG."""

    def __init__(self, sim: Simulator, bootstrap: str, topics: TopicNames, tmp_path: Path) -> None:
        self.aliases = list(sim.accounts)
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "sasl").write_text(PLANTED_SASL)
        (secrets / "delegate").write_text(sim.delegate.password)
        self.users: dict[str, Any] = sim.accounts.to_json()
        self.users[self.aliases[0]] = {"token": sim.accounts[self.aliases[0]].token}
        self.users[self.aliases[1]] = {"password": PLANTED_WRONG}
        self.users[self.aliases[2]] = {"token": PLANTED_BEARER}
        common = {
            "KAFKA_SASL_USERNAME": "ingest",
            "KAFKA_SASL_PASSWORD_FILE": str(secrets / "sasl"),
            "CUMI_LOG_LEVEL": "DEBUG",
        }
        t0 = asyncio.get_running_loop().time()

        def worker(name: str, users: dict[str, Any] | None = None, **env: str) -> Service:
            (tmp_path / name).mkdir()
            settings = worker_env(sim, bootstrap, topics, tmp_path / name, users=users)
            return Service(name, "worker", settings | common | env, tmp_path / f"{name}.log", t0)

        self.files_worker = worker("files-worker", self.users)
        self.delegate_worker = worker(
            "delegate-worker",
            CUMI_CREDENTIALS_PROVIDER="delegate",
            CUMI_DELEGATE_USER=sim.delegate.username,
            CUMI_DELEGATE_PASSWORD_FILE=str(secrets / "delegate"),
        )
        self.sasl_worker = worker("sasl-worker", KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")
        projector_env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_EVENTS_TOPIC": topics.events,
            "KAFKA_STATE_TOPIC": topics.state,
            "CUMI_PROJECTOR_GROUP_ID": f"secrets-{uuid.uuid4().hex[:6]}",
            "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "100",
            **common,
        }
        self.projector = Service(
            "projector", "projector", projector_env, tmp_path / "projector.log", t0
        )
        self.projector_group = projector_env["CUMI_PROJECTOR_GROUP_ID"]
        self.serving = [self.files_worker, self.delegate_worker, self.projector]
        self.all = [*self.serving, self.sasl_worker]


async def topic_values(bootstrap: str, topic: str) -> list[bytes]:
    reader = TopicReader(bootstrap, topic)  # reads transactional topics (the state) too
    await reader.start()
    try:
        await reader.catch_up()
    finally:
        await reader.stop()
    assert reader.values, f"nothing on {topic}"
    return reader.values


class TestSecretsNeverShown:
    """Known secrets in every credential setting; workers and the projector at DEBUG go through
    their failure paths (401s, an unreachable SASL cluster); then every log, /metrics page, dead
    letter, event record, state record and read API answer is searched for them."""

    async def test_no_secret_anywhere(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=12, seed=61)
        d = Deployment(sim, kafka_bootstrap, fresh_topics, tmp_path)
        exposed: list[tuple[str, str | bytes]] = []
        try:
            for service in d.all:
                await service.start()
            for service in d.serving:
                await service.wait_ready(120)
            sim.emit(300)
            channel = channel_of(sim.subscriptions.of_mailbox(d.aliases[5])[0])
            assert sim.bayeux.deliver(channel, bayeux_message(channel, {"USN": "x"})) >= 1
            async with asyncio.timeout(60):
                while not await read_topic(kafka_bootstrap, fresh_topics.dlq):  # noqa: ASYNC110
                    await asyncio.sleep(0.3)
            # the projector has applied and committed all of it: its pages have content to search
            await wait_committed(kafka_bootstrap, d.projector_group, fresh_topics.events, 60)
            for service in d.serving:
                exposed.append(
                    (f"{service.name} /metrics", (await service.get_text("/metrics"))[1])
                )
            exposed += await read_api_pages(d.projector, d.aliases)
        finally:
            codes = {service.name: await service.terminate() for service in d.all}
        for topic in (fresh_topics.events, fresh_topics.dlq, fresh_topics.state):
            exposed += [(topic, value) for value in await topic_values(kafka_bootstrap, topic)]
        logs = {service.name: service.log_text() for service in d.all}
        exposed += [(f"{name} log", text) for name, text in logs.items()]

        secrets = planted_secrets(sim)
        assert leaks(exposed, secrets) == []
        # the search finds secrets where they are (the users file handed to the worker)
        assert len(leaks([("users", json.dumps(d.users))], secrets)) >= len(d.aliases)
        # and the paths that could leak were really taken
        assert codes == dict.fromkeys(codes, 0), codes
        assert all(" DEBUG " in text for text in logs.values())
        refused = [line for line in logs["files-worker"].splitlines() if "refused" in line]
        for alias in d.aliases[1:3]:
            assert any(alias in line for line in refused), alias
        assert "Kafka not reachable" in logs["sasl-worker"]
        assert f"→ active {len(d.aliases)}" in logs["delegate-worker"]  # the delegate got in


async def read_api_pages(projector: Service, aliases: list[str]) -> list[tuple[str, str]]:
    pages = []
    async with aiohttp.ClientSession() as http:
        for path in ["/mailboxes?limit=1000", *[f"/mailboxes/{a}" for a in aliases]]:
            async with http.get(projector.base_url + path) as response:
                pages.append((f"read API {path}", await response.text()))
    assert any(json.loads(text).get("inbox") for _, text in pages[1:]), "nothing was served"
    return pages
