"""`ingest simulator` as a process, and the `/_sim/…` admin endpoints that drive its faults."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator
from fixtures.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def read_urls(process: asyncio.subprocess.Process) -> dict[str, str]:
    assert process.stdout is not None
    urls: dict[str, str] = {}
    async with asyncio.timeout(20):
        while "admin" not in urls:
            line = (await process.stdout.readline()).decode()
            assert line, "the simulator exited before printing its URLs"
            name, url = line.split()
            urls[name] = url
    return urls


class TestCommand:
    """The command serves, writes the users file, obeys the admin endpoints, stops on SIGTERM."""

    async def test_run_drive_and_stop(self, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        users_file, delegate_file = tmp_path / "users.json", tmp_path / "delegate.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest",
            "simulator",
            *("--mailboxes", "3", "--rate", "200", "--seed", "5", "--admin"),
            *("--port", "0", "--cometd-port", "0", "--connect-timeout", "1"),
            *("--users-file", str(users_file), "--delegate-file", str(delegate_file)),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            urls = await read_urls(process)
            users = json.loads(users_file.read_text())
            assert sorted(users) == ["user0001", "user0002", "user0003"]
            assert set(users["user0001"]) >= {"password", "object_id"}
            delegate = json.loads(delegate_file.read_text())
            listing = f"{urls['REST']}/vmrest/mailbox/folders/inbox/messages"
            auth = aiohttp.encode_basic_auth(delegate["username"], delegate["password"])
            params = {"userobjectid": users["user0002"]["object_id"]}
            async with http.get(listing, headers={"Authorization": auth}, params=params) as r:
                assert r.status == 200
            stats: dict[str, Any] = {}

            async def emitting() -> bool:
                async with http.get(urls["admin"] + "stats") as response:
                    stats.update(await response.json())
                return bool(stats["emitted_total"] > 0)

            await eventually(emitting, within=30, what="the scenario emitting", interval=0.2)
            assert stats["lost"] == stats["emitted_total"]
            assert await post(http, urls["admin"] + "fault/restart") == (
                200,
                {"fault": "restart", "result": None},
            )
            status, _ = await post(http, urls["admin"] + "scenario", {"events": 5})
            assert status == 409, "the command's own scenario is still running"
            async with http.get(urls["admin"] + "truth") as response:
                assert sorted(await response.json()) == sorted(users)
            async with http.head(urls["CometD"]) as response:
                assert response.status == 405
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 10)
        assert code == 0


class TestAdminEndpoints:
    """Each fault and the scenario can be triggered over HTTP."""

    async def test_every_fault(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(admin=True)
        admin = f"{sim.base_url}/_sim/"
        calls: list[tuple[str, Any]] = [
            ("duplicates", {"ratio": 0.25}),
            ("malformed", {"ratio": 0.5}),
            ("slow", {"latency": 0.01}),
            ("storm", {"duration": 60}),
        ]
        for name, body in calls:
            assert (await post(http, admin + f"fault/{name}", body))[0] == 200
        assert (sim.faults.duplicate_ratio, sim.faults.malformed_ratio) == (0.25, 0.5)
        assert sim.faults.rest_latency == 0.01 and sim.faults.storm_until > 0
        assert (await post(http, admin + "fault/clear"))[0] == 200
        assert sim.faults.duplicate_ratio == 0 and sim.faults.storm_until == 0
        assert (await post(http, admin + "fault/notifier_down"))[0] == 200
        assert (await post(http, admin + "scenario", {"events": 20}))[0] == 200
        await sim.wait_idle()
        assert sim.stats.withheld == 20 and not sim.notifier.is_up
        status, body = await post(http, admin + "fault/notifier_up")
        assert status == 200 and body["result"] == sim.stats.coalesced > 0
        status, body = await post(
            http, admin + "fault/inject_malformed", {"alias": "user0001", "kind": "mistyped_usn"}
        )
        assert (status, body["result"]) == (200, 0), "no session was subscribed"
        assert (await post(http, admin + "fault/drop_connections"))[0] == 200
        assert (await post(http, admin + "fault/restart"))[0] == 200
        assert sim.stats.restarts == 1
        assert (await post(http, admin + "fault/nonsense"))[0] == 404
        assert (await post(http, admin + "fault/slow", {"latency": "fast"}))[0] == 400
        assert (await post(http, admin + "fault/duplicates", {}))[0] == 400
        assert (await post(http, admin + "scenario", {"events": "many"}))[0] == 400
        async with http.post(admin + "scenario", data=b"[1]") as response:
            assert response.status == 400
        assert (await post(http, admin + "scenario/stop"))[0] == 200
        before = sim.stats.emitted_total
        assert await post(http, admin + "emit", {"events": 7}) == (200, {"emitted": 7})
        assert sim.stats.emitted_total == before + 7
        assert (await post(http, admin + "emit", {}))[0] == 400

    async def test_admin_is_off_by_default(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator()
        async with http.get(f"{sim.base_url}/_sim/stats") as response:
            assert response.status == 404
