"""The worker's readiness names what is missing: started on topics that do not exist (a prefix
typo, topics never applied) it says so in one rate-limited line and in /healthz/ready, and
becomes ready once `ingest topics apply` has created them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import aiohttp
import pytest
from fixtures.producing import delete_topics
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually
from fixtures.worker import worker_env

from ingest.eventlog.provision import apply
from ingest.eventlog.topics import MISSING_LOG, TopicNames, default_specs
from ingest.ops.logs import RepeatLimiter
from ingest.settings import Settings
from ingest.worker import Worker

pytestmark = pytest.mark.integration


async def ready_body(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz/ready") as response,
    ):
        return response.status, await response.json()


async def test_missing_topics_named_until_applied(
    make_simulator: MakeSimulator,
    kafka_bootstrap: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=MISSING_LOG.name)
    sim = await make_simulator(mailboxes=3, seed=2)
    names = TopicNames.with_prefix(f"typo-{uuid.uuid4().hex[:10]}-")
    worker = Worker(Settings.load(worker_env(sim, kafka_bootstrap, names, tmp_path)))
    task = asyncio.create_task(worker.run())
    try:
        await eventually(
            lambda: worker.ops is not None and worker.ops.port is not None,
            within=30,
            what="the ops server",
        )
        assert worker.ops is not None and worker.ops.port is not None
        port = worker.ops.port

        async def says_topics_missing() -> bool:
            status, body = await ready_body(port)
            return (
                status == 503
                and body["checks"] == {"topics": False, "kafka": False, "subscriptions": False}
                and names.events in str(body.get("reasons"))
                and "ingest topics apply" in str(body.get("reasons"))
            )

        await eventually(says_topics_missing, within=30, what="readiness naming the topics")
        why = worker.readiness()["topics"]
        assert why is not None and names.events in why and "ingest topics apply" in why
        await eventually(
            lambda: len([r for r in caplog.records if r.name == MISSING_LOG.name]) >= 2,
            within=30,
            what="two looks at the topics",
        )
        # what passes the process's rate limiter: the first line only (30 s period)
        limiter = RepeatLimiter(prefixes=(MISSING_LOG.name,), period=30.0)
        shown = [r.getMessage() for r in caplog.records if limiter.filter(r)]
        assert len(shown) == 1, shown
        assert names.events in shown[0] and "run `ingest topics apply`" in shown[0]

        report, _ = await apply(default_specs(names), {"bootstrap_servers": kafka_bootstrap})
        assert report.in_line
        await eventually(worker.is_ready, within=60, what="ready once the topics exist")
        status, body = await ready_body(port)
        assert status == 200 and body["status"] == "ok" and "reasons" not in body
    finally:
        worker.stop()
        async with asyncio.timeout(30):
            assert await task == 0
        await delete_topics(kafka_bootstrap, names.all())
