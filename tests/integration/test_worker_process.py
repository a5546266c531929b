"""`ingest worker` as a real process: health endpoints, SIGTERM → drained, exit 0, quiet logs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator
from fixtures.worker import decode_all, read_topic, worker_env

from ingest.eventlog.topics import TopicNames
from ingest.events import MailboxEvent

pytestmark = pytest.mark.integration

SHUTDOWN_BOUND = 20.0  # CUMI_SHUTDOWN_TIMEOUT_SECONDS default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, process: asyncio.subprocess.Process, within: float = 60) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while process.returncode is None:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"worker exited {process.returncode} before it was ready")


class TestProcess:
    """The real command line, as Kubernetes runs it."""

    async def test_sigterm_drains_and_exits_zero(
        self,
        make_simulator: MakeSimulator,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        tmp_path: Path,
    ) -> None:
        sim = await make_simulator(mailboxes=50, seed=31)
        port = free_port()
        env = worker_env(
            sim,
            kafka_bootstrap,
            fresh_topics,
            tmp_path,
            CUMI_METRICS_PORT=str(port),
            CUMI_SHUTDOWN_TIMEOUT_SECONDS="8",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest",
            "worker",
            env={**os.environ, **env, "CUMI_LOG_FORMAT": "text"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(f"{base}/healthz/ready", process)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz/live") as response:
                    assert response.status == 200
                async with http.get(f"{base}/metrics") as response:
                    metrics = await response.text()
            assert "cumi_worker_ready 1.0" in metrics
            sim.run_scenario(events=3_000, rate=2_000)
            await asyncio.sleep(0.8)  # mid-stream
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(SHUTDOWN_BOUND + 20):
                _, stderr = await process.communicate()
            elapsed = time.monotonic() - started
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        log = stderr.decode()
        assert process.returncode == 0, log[-3000:]
        # the contract is the configured shutdown bound (default 20 s), not a speed target
        assert elapsed < SHUTDOWN_BOUND, f"SIGTERM took {elapsed:.1f} s\n{log[-4000:]}"
        assert "Traceback" not in log and "CancelledError" not in log
        assert "not acknowledged" not in log  # everything received was produced and acked
        assert all(password not in log for password in sim.users.values())
        # what the worker received before stopping is in Kafka: nothing was dropped on the floor
        await sim.stop_scenario()
        events = [
            d
            for d in decode_all(await read_topic(kafka_bootstrap, fresh_topics.events))
            if isinstance(d, MailboxEvent)
        ]
        assert 0 < len(events) <= sim.stats.emitted_total
        assert len(events) >= sim.stats.delivered - 1_000  # at most one unfinished payload

    async def test_configuration_error_exits_2_naming_the_setting(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
        env.update(CUMI_SERVER_URL="ftp://nowhere", CUMI_LOG_FORMAT="text")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest", "worker", env=env, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 2
        assert "CUMI_SERVER_URL" in stderr.decode()
