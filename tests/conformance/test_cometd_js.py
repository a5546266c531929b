"""Conformance with the official CometD JavaScript client, run under Node.

`node` and the npm packages `cometd` and `cometd-nodejs-client` are required: `.ci/install-tools`
installs the packages into $CUMI_CACHE_DIR/node (default ~/.cache/cumi-pipeline/node). Without them
this test FAILS rather than skips, so a machine that cannot run it never shows green.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator, fold, request_notification
from fixtures.tools import node_modules, tool

from ingest.simulator import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.tools]

SCRIPT = Path(__file__).with_name("cometd_js_client.mjs")
EVENTS = 400


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def run_js_client(
    sim: Simulator, channels: list[str], transport: str, expected: int
) -> dict[str, object]:
    node = tool("node")
    modules = node_modules("cometd", "cometd-nodejs-client")
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CUMI_NODE_MODULES": str(modules)},
    )
    assert process.stdin and process.stdout and process.stderr
    config = {
        "url": sim.cometd_url,
        "transport": transport,
        "channels": channels,
        "expected": expected,
        "timeoutMs": 20_000,
    }
    process.stdin.write(json.dumps(config).encode())
    process.stdin.close()
    try:
        async with asyncio.timeout(30):
            ready = await process.stdout.readline()
            if ready.strip() == b"READY":
                sim.run_scenario(events=expected, rate=2_000)
            out = await process.stdout.read()
            err = await process.stderr.read()
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, f"node client exited {code}: {err.decode()} {ready.decode()}"
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class TestCometdJavaScript:
    """Handshake, subscribe to every mailbox, receive N events; the events fold to the truth."""

    @pytest.mark.parametrize("transport", ["long-polling", "websocket"])
    async def test_receives_every_event(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession, transport: str
    ) -> None:
        sim = await make_simulator(mailboxes=50)
        channels = [
            "/vmrest/mailbox/" + await request_notification(http, sim, alias) for alias in sim.users
        ]
        result = await run_js_client(sim, channels, transport, EVENTS)
        assert result["transport"] == transport
        events = result["events"]
        assert isinstance(events, list) and len(events) == EVENTS
        await sim.wait_idle()
        assert sim.stats.emitted_total == EVENTS and sim.stats.lost == 0
        folded, truth = fold(events), sim.truth()
        assert folded == {alias: truth[alias] for alias in folded}
        assert all(
            not (box["inbox"] or box["deleted"]) for a, box in truth.items() if a not in folded
        )
