"""The simulator's CUMI REST API on a real socket: auth, notification, users, folders, throttle."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fixtures.simulator import MakeSimulator, request_notification
from fixtures.waiting import eventually

from ingest.simulator import Op, Simulator

pytestmark = pytest.mark.integration


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(sim: Simulator, alias: str) -> dict[str, str]:
    return {"Authorization": sim.accounts[alias].authorization()}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], **params: Any
) -> Any:
    async with http.get(url, headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


class TestAuth:
    """Every REST call needs valid Basic or Bearer credentials."""

    async def test_bad_or_missing_credentials_get_401(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox?method=requestnotification"
        wrong = aiohttp.encode_basic_auth("user0001", "wrong")
        for headers in ({}, {"Authorization": wrong}, {"Authorization": "Bearer nope"}):
            async with http.post(url, data="{}", headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert simulator.stats.rest_unauthorized == 3

    async def test_bearer_token_works(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        token = simulator.accounts["user0002"].token
        url = f"{simulator.base_url}/vmrest/mailbox/folders/inbox"
        body = await get_json(http, url, {"Authorization": f"Bearer {token}"})
        assert body["USN"] == str(simulator.scenario.mailboxes["user0002"].usn)


class TestRequestNotification:
    """requestnotification returns a new subscriptionId for the caller's (or delegated) mailbox."""

    async def test_new_guid_each_call_owned_by_the_mailbox(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        first = await request_notification(http, simulator, "user0001")
        second = await request_notification(http, simulator, "user0001")
        assert first != second and uuid.UUID(first) and uuid.UUID(second)
        assert simulator.subscriptions.mailbox_of(first) == "user0001"
        assert list(simulator.subscriptions.of_mailbox("user0001")) == [first, second]

    async def test_other_methods_are_refused(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox?method=somethingelse"
        async with http.post(url, headers=auth(simulator, "user0001")) as response:
            assert response.status == 400

    async def test_delegate_acts_for_userobjectid(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        target = simulator.accounts["user0003"]
        url = f"{simulator.base_url}/vmrest/mailbox?method=requestnotification"
        headers = {"Authorization": simulator.delegate.authorization()}
        params = {"userobjectid": target.object_id}
        async with http.post(url, headers=headers, params=params) as response:
            assert response.status == 200
            assert simulator.subscriptions.mailbox_of(await response.text()) == "user0003"
        async with http.post(url, headers=headers) as response:
            assert response.status == 400, "the delegate has no mailbox of its own"
        async with http.post(url, headers=headers, params={"userobjectid": "nope"}) as response:
            assert response.status == 404

    async def test_users_cannot_act_for_others(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox?method=requestnotification"
        other = {"userobjectid": simulator.accounts["user0002"].object_id}
        own = {"userobjectid": simulator.accounts["user0001"].object_id}
        headers = auth(simulator, "user0001")
        async with http.post(url, headers=headers, params=other) as response:
            assert response.status == 403
        async with http.post(url, headers=headers, params=own) as response:
            assert response.status == 200

    async def test_delegate_notifications_can_be_switched_off(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(delegate_notifications=False)
        url = f"{sim.base_url}/vmrest/mailbox?method=requestnotification"
        headers = {"Authorization": sim.delegate.authorization()}
        params = {"userobjectid": sim.accounts["user0001"].object_id}
        async with http.post(url, headers=headers, params=params) as response:
            assert response.status == 403
        listing = f"{sim.base_url}/vmrest/mailbox/folders/inbox/messages"
        assert (await get_json(http, listing, headers, **params))["@total"] == "0"


class TestUsers:
    """User lookup by alias, with CUMI's single-object quirk."""

    async def test_query_by_alias(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        url = f"{simulator.base_url}/vmrest/users"
        headers = {"Authorization": simulator.delegate.authorization()}
        body = await get_json(http, url, headers, query="(alias is user0004)")
        user = simulator.accounts["user0004"]
        assert body == {
            "@total": "1",
            "User": {
                "URI": f"/vmrest/users/{user.object_id}",
                "ObjectId": user.object_id,
                "Alias": "user0004",
                "DisplayName": user.display_name,
            },
        }
        assert await get_json(http, url, headers, query="(alias is nobody)") == {"@total": "0"}
        async with http.get(url, headers=headers, params={"query": "(name has x)"}) as response:
            assert response.status == 400
        one = await get_json(http, f"{url}/{user.object_id}", headers)
        assert one["Alias"] == "user0004"

    async def test_list_pages(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        url = f"{simulator.base_url}/vmrest/users"
        headers = auth(simulator, "user0001")
        page = await get_json(http, url, headers, rowsperpage=2, pagenumber=3)
        assert page["@total"] == "5" and page["User"]["Alias"] == "user0005"
        page = await get_json(http, url, headers, rowsperpage=2, pagenumber=1)
        assert [u["Alias"] for u in page["User"]] == ["user0001", "user0002"]


class TestFolders:
    """Folder listings and resources match the truth, with CUMI's JSON conventions."""

    async def test_listing_shapes_and_fields(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox/folders/inbox/messages"
        headers = auth(simulator, "user0001")
        assert await get_json(http, url, headers) == {"@total": "0"}
        first = simulator.perform("user0001", Op.NEW).notices[0].messages[0]
        single = await get_json(http, url, headers)
        assert single["@total"] == "1" and isinstance(single["Message"], dict)
        message = single["Message"]
        assert message["MsgId"] == f"0:{first.message_id}"
        assert message["Read"] == "false"
        assert message["ArrivalTime"] == str(first.arrival_ms)
        assert isinstance(message["From"], dict) and message["From"]["DisplayName"]
        assert message["Priority"] in ("Normal", "Urgent", "Low")
        assert message["MsgType"] == first.msg_type
        assert ("CallerId" in message) == (first.caller_ani is not None)
        simulator.perform("user0001", Op.NEW, count=2)
        simulator.perform("user0001", Op.READ, message_ids=[first.message_id])
        many = await get_json(http, url, headers)
        assert many["@total"] == "3" and isinstance(many["Message"], list)
        read = {m["MsgId"].removeprefix("0:"): m["Read"] == "true" for m in many["Message"]}
        truth = simulator.truth()["user0001"]["inbox"]
        assert read == {mid: state["read"] for mid, state in truth.items()}

    async def test_pages_and_usn_filter(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox/folders/deleted/messages"
        headers = auth(simulator, "user0002")
        simulator.perform("user0002", Op.NEW, count=4)
        simulator.perform("user0002", Op.DELETE, count=4)
        mailbox = simulator.scenario.mailboxes["user0002"]
        mark = mailbox.usn
        changed = simulator.perform("user0002", Op.DELETED_READ).notices[0].messages[0]
        pages = [await get_json(http, url, headers, rowsperpage=3, pagenumber=n) for n in (1, 2, 3)]
        assert [p["@total"] for p in pages] == ["4", "4", "4"]
        assert len(pages[0]["Message"]) == 3 and isinstance(pages[1]["Message"], dict)
        assert "Message" not in pages[2]
        ids = {m["MsgId"] for m in pages[0]["Message"]} | {pages[1]["Message"]["MsgId"]}
        assert ids == {f"0:{mid}" for mid in mailbox.deleted}
        recent = await get_json(http, url, headers, usngreaterthan=mark)
        assert recent["@total"] == "1" and recent["Message"]["MsgId"] == f"0:{changed.message_id}"
        async with http.get(url, headers=headers, params={"pagenumber": "0"}) as response:
            assert response.status == 400

    async def test_folder_resource(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        simulator.perform("user0003", Op.NEW, count=3)
        simulator.perform("user0003", Op.DELETE)
        headers = auth(simulator, "user0003")
        inbox = await get_json(http, f"{simulator.base_url}/vmrest/mailbox/folders/inbox", headers)
        deleted = await get_json(
            http, f"{simulator.base_url}/vmrest/mailbox/folders/deleted", headers
        )
        usn = str(simulator.scenario.mailboxes["user0003"].usn)
        assert (inbox["MessageCount"], inbox["USN"]) == ("2", usn)
        assert (deleted["MessageCount"], deleted["USN"]) == ("1", usn)
        async with http.get(
            f"{simulator.base_url}/vmrest/mailbox/folders/sent", headers=headers
        ) as response:
            assert response.status == 404


class TestThrottling:
    """5 concurrent calls, a bounded queue, 503 beyond it; storms and latency on demand."""

    async def test_queue_overflow_gets_503_with_retry_after(
        self, make_simulator: MakeSimulator, http: aiohttp.ClientSession
    ) -> None:
        sim = await make_simulator(rest_queue_limit=3, retry_after=7)
        sim.slow(0.5)
        url = f"{sim.base_url}/vmrest/mailbox/folders/inbox"
        headers = auth(sim, "user0001")

        async def call() -> tuple[int, str | None]:
            async with http.get(url, headers=headers) as response:
                return response.status, response.headers.get("Retry-After")

        results = await asyncio.gather(*(call() for _ in range(12)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200] * 8 + [503] * 4, "5 running + 3 queued succeed"
        assert {retry for status, retry in results if status == 503} == {"7"}
        assert sim.stats.rest_throttled == 4

    async def test_storm_then_recovery(
        self, simulator: Simulator, http: aiohttp.ClientSession
    ) -> None:
        url = f"{simulator.base_url}/vmrest/mailbox/folders/inbox"
        headers = auth(simulator, "user0001")
        simulator.storm(2.0)  # long enough for the first request to land in it on a loaded machine
        async with http.get(url, headers=headers) as response:
            assert response.status == 503

        async def answered() -> bool:
            async with http.get(url, headers=headers) as response:
                return response.status == 200

        await eventually(answered, within=10, what="answered again after the storm", interval=0.2)

    async def test_slow_responses(self, simulator: Simulator, http: aiohttp.ClientSession) -> None:
        simulator.slow(0.2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await get_json(
            http, f"{simulator.base_url}/vmrest/mailbox/folders/inbox", auth(simulator, "user0001")
        )
        assert loop.time() - start >= 0.2
        simulator.clear_faults()
        assert simulator.faults.rest_latency == 0
