"""Kafka authentication for real: the worker and the projector processes against a broker whose
client listener requires SASL_SSL with SCRAM-SHA-512, and against one that requires mutual TLS
(a client certificate signed by the test CA). Both carry the pipeline end to end — the events
topic folds to the simulator's truth, the state topic equals that fold — and a wrong password or a
missing client certificate stops each process at start with one clear line (exit 2).

The brokers are `fixtures.secure_kafka.SecureBroker`s; what the pipeline wrote is read back through
their PLAINTEXT listener (not under test).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from chaos.observe import TopicReader
from chaos.processes import REPO, Service
from fixtures.producing import state_differences, wait_committed
from fixtures.secure_kafka import SCRAM_MECHANISM, SCRAM_PASSWORD, SCRAM_USER, Mode, SecureBroker
from fixtures.simulator import MakeSimulator
from fixtures.tls import TlsFiles
from fixtures.worker import worker_env

from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.settings import SettingsSource, load_kafka
from ingest.simulator import Simulator
from ingest.state.projection import diff_states
from ingest.state.store import read_state_topic

pytestmark = pytest.mark.integration

EVENTS = 400
PARTITIONS = 4
WRONG = "wrong-" + uuid.uuid4().hex


@pytest_asyncio.fixture
async def secure_broker(
    request: pytest.FixtureRequest, tls_files: TlsFiles, tmp_path: Path
) -> AsyncIterator[SecureBroker]:
    """A broker in the `Mode` the test is parametrized with (indirect)."""
    mode: Mode = request.param
    async with SecureBroker(mode, tls_files, tmp_path / f"kafka-{mode.value}") as broker:
        yield broker


def security_env(
    broker: SecureBroker, tls: TlsFiles, secrets: Path, *, password: str = SCRAM_PASSWORD
) -> dict[str, str]:
    """The Kafka settings of a client of `broker`'s secured listener."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.secure_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": broker.mode.protocol,
        "KAFKA_SSL_CA_FILE": str(tls.ca),
    }
    if broker.mode is Mode.SASL_SSL:
        secrets.mkdir(exist_ok=True)
        password_file = secrets / f"sasl-{uuid.uuid4().hex[:6]}"
        password_file.write_text(password)
        env |= {
            "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": SCRAM_USER,
            "KAFKA_SASL_PASSWORD_FILE": str(password_file),
        }
    if broker.mode is Mode.MTLS:
        env |= {
            "KAFKA_SSL_CERT_FILE": str(tls.client_cert),
            "KAFKA_SSL_KEY_FILE": str(tls.client_key),
        }
    return env


def projector_env(topics: TopicNames, security: dict[str, str]) -> dict[str, str]:
    return {
        "KAFKA_EVENTS_TOPIC": topics.events,
        "KAFKA_STATE_TOPIC": topics.state,
        "CUMI_PROJECTOR_GROUP_ID": f"auth-{uuid.uuid4().hex[:6]}",
        "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "100",
        **security,
    }


async def create_topics(security: dict[str, str]) -> TopicNames:
    """The pipeline's topics, created through the secured listener (the admin client too)."""
    names = TopicNames.with_prefix(f"auth-{uuid.uuid4().hex[:8]}-")
    kwargs = load_kafka(SettingsSource(security)).client_kwargs()
    bootstrap = kwargs.pop("bootstrap_servers")
    await ensure_topics(bootstrap, default_specs(names, events_partitions=PARTITIONS), **kwargs)
    return names


async def folded(bootstrap: str, topic: str, sim: Simulator, within: float = 90) -> TopicReader:
    """A reader of the events topic once its fold equals the truth (or the time is up)."""
    reader = TopicReader(bootstrap, topic)
    await reader.start()
    deadline = asyncio.get_running_loop().time() + within
    while True:
        await reader.catch_up()
        problems = diff_states(sim.truth(), reader.projection.to_json())
        if not problems or asyncio.get_running_loop().time() > deadline:
            await reader.stop()
            assert not problems, problems[:5]
            return reader
        await asyncio.sleep(0.5)


class TestAuthenticatedPipeline:
    """Worker and projector processes through the secured listener only."""

    @pytest.mark.timeout(300)
    @pytest.mark.parametrize("secure_broker", [Mode.SASL_SSL, Mode.MTLS], indirect=True)
    async def test_events_and_state_arrive(
        self,
        secure_broker: SecureBroker,
        tls_files: TlsFiles,
        make_simulator: MakeSimulator,
        tmp_path: Path,
    ) -> None:
        security = security_env(secure_broker, tls_files, tmp_path / "secrets")
        topics = await create_topics(security)
        sim = await make_simulator(mailboxes=12, seed=71)
        t0 = asyncio.get_running_loop().time()
        env = worker_env(sim, secure_broker.secure_bootstrap, topics, tmp_path) | security
        worker = Service("worker", "worker", env, tmp_path / "worker.log", t0)
        penv = projector_env(topics, security)
        projector = Service("projector", "projector", penv, tmp_path / "projector.log", t0)
        group = penv["CUMI_PROJECTOR_GROUP_ID"]
        try:
            for service in (worker, projector):
                await service.start()
            for service in (worker, projector):
                await service.wait_ready(120)
            sim.emit(EVENTS)
            plain = secure_broker.bootstrap
            events = await folded(plain, topics.events, sim)
            await wait_committed(plain, group, topics.events, within=90)
            state = await read_state_topic(topics.state, bootstrap_servers=plain)
        finally:
            codes = [await service.terminate() for service in (worker, projector)]
        assert sim.stats.emitted_total == EVENTS
        assert state_differences(events.projection, state) == []
        assert len(state) == len(sim.accounts)
        assert codes == [0, 0], (worker.tail(), projector.tail())
        for service in (worker, projector):
            assert not service.stats.unplanned_exits, service.tail()
            assert "not reachable" not in service.log_text(), service.tail()


async def run_to_exit(command: str, env: dict[str, str], log_path: Path, within: float = 60) -> int:
    """`python -m ingest <command>` until it exits by itself (no supervisor: no restart)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest",
            command,
            env={**keep, "CUMI_LOG_FORMAT": "text", "CUMI_METRICS_HOST": "127.0.0.1", **env},
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        try:
            return await asyncio.wait_for(proc.wait(), within)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def refused_env(
    broker: SecureBroker, tls: TlsFiles, secrets: Path, good: dict[str, str]
) -> dict[str, str]:
    """What the broker refuses: a wrong SCRAM password, no client certificate; or (SSL) what we
    refuse: its certificate, without the CA that signed it."""
    if broker.mode is Mode.SASL_SSL:
        return security_env(broker, tls, secrets, password=WRONG)
    left_out: tuple[str, ...] = ("KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")
    if broker.mode is Mode.SSL:
        left_out = ("KAFKA_SSL_CA_FILE",)
    return {k: v for k, v in good.items() if k not in left_out}


class TestRefused:
    """Credentials or a certificate the broker does not accept (or a broker certificate we do
    not): no retrying for ever, no flood, no traceback — each process stops at start with exit
    code 2 and one line naming what to check."""

    @pytest.mark.timeout(180)
    @pytest.mark.parametrize(
        ("secure_broker", "expected"),
        [
            (Mode.SASL_SSL, "SASL authentication failed (SCRAM-SHA-512 as user 'ingest')"),
            (Mode.MTLS, "it refused the TLS handshake"),
            (Mode.SSL, "its TLS certificate is not trusted"),
        ],
        indirect=["secure_broker"],
    )
    async def test_stops_with_one_clear_line(
        self,
        secure_broker: SecureBroker,
        expected: str,
        tls_files: TlsFiles,
        make_simulator: MakeSimulator,
        tmp_path: Path,
    ) -> None:
        good = security_env(secure_broker, tls_files, tmp_path / "secrets")
        topics = await create_topics(good)
        wrong = refused_env(secure_broker, tls_files, tmp_path / "secrets", good)
        sim = await make_simulator(mailboxes=3, seed=72)
        envs = {
            "worker": worker_env(sim, secure_broker.secure_bootstrap, topics, tmp_path) | wrong,
            "projector": projector_env(topics, wrong),
        }
        for command, env in envs.items():
            log_path = tmp_path / f"{command}.log"
            code = await run_to_exit(command, {**env, "CUMI_METRICS_PORT": "0"}, log_path)
            text = log_path.read_text(errors="replace")
            refusals = [line for line in text.splitlines() if expected in line]
            errors = [line for line in text.splitlines() if " ERROR " in line]
            assert code == 2, text
            assert len(refusals) == 1, text
            assert errors == refusals, text  # the only error line
            assert "configuration error: Kafka at " + secure_broker.secure_bootstrap in refusals[0]
            assert "Traceback" not in text, text
            assert WRONG not in text, text
