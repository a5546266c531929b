"""The CUMI REST client against the simulator over real sockets: retries, auth, delegate, lists."""

from __future__ import annotations

import asyncio
import time

import pytest
from fixtures.simulator import MakeSimulator

from ingest.cumi.credentials import Credential, DelegateCredentials, MissingCredentials
from ingest.cumi.rest import CumiRestClient, Folder
from ingest.errors import AuthError, TransportError
from ingest.ops.backoff import Backoff
from ingest.simulator import Op, Simulator

pytestmark = pytest.mark.integration

FAST = Backoff(base=0.02, cap=0.2)


def own(sim: Simulator, alias: str) -> Credential:
    return Credential.basic(alias, sim.accounts[alias].password)


def delegate(sim: Simulator) -> Credential:
    return Credential.basic(sim.delegate.username, sim.delegate.password)


class TestRequestNotification:
    """A subscriptionId comes back; 401 is AuthError at once; 503s are retried."""

    async def test_subscription_id(self, simulator: Simulator) -> None:
        async with CumiRestClient(simulator.base_url) as rest:
            subscription_id = await rest.request_notification(own(simulator, "user0001"))
        assert simulator.subscriptions.mailbox_of(subscription_id) == "user0001"

    async def test_wrong_password_is_auth_error_without_retry(self, simulator: Simulator) -> None:
        async with CumiRestClient(simulator.base_url, backoff=FAST) as rest:
            with pytest.raises(AuthError) as info:
                await rest.request_notification(Credential.basic("user0001", "wrong"))
        assert "wrong" not in str(info.value)
        assert simulator.stats.rest_unauthorized == 1

    async def test_storm_is_retried_until_it_ends(self, make_simulator: MakeSimulator) -> None:
        sim = await make_simulator(retry_after=None)
        sim.storm(0.5)
        started = time.monotonic()
        async with CumiRestClient(
            sim.base_url, backoff=Backoff(0.05, 0.3), max_attempts=20
        ) as rest:
            subscription_id = await rest.request_notification(own(sim, "user0002"))
        assert subscription_id
        assert sim.stats.rest_throttled >= 2
        assert time.monotonic() - started >= 0.45

    async def test_retry_after_is_honoured(self, make_simulator: MakeSimulator) -> None:
        sim = await make_simulator(retry_after=1)
        sim.storm(0.2)
        started = time.monotonic()
        async with CumiRestClient(sim.base_url, backoff=FAST) as rest:
            await rest.request_notification(own(sim, "user0002"))
        # jitter alone would have retried within 0.2 s; Retry-After: 1 makes it wait a second
        assert time.monotonic() - started >= 0.95
        assert sim.stats.rest_throttled == 1

    async def test_bounded_attempts_then_transport_error(
        self, make_simulator: MakeSimulator
    ) -> None:
        sim = await make_simulator()
        sim.storm(30)
        async with CumiRestClient(sim.base_url, backoff=FAST, max_attempts=3) as rest:
            with pytest.raises(TransportError, match="after 3 attempts"):
                await rest.request_notification(own(sim, "user0001"))
        assert sim.stats.rest_throttled == 3

    async def test_unreachable_server_is_transport_error(self) -> None:
        async with CumiRestClient("http://127.0.0.1:9", backoff=FAST, max_attempts=2) as rest:
            with pytest.raises(TransportError, match="ClientConnector"):
                await rest.request_notification(Credential.basic("a", "b"))

    async def test_concurrency_stays_within_the_server_limit(
        self, make_simulator: MakeSimulator
    ) -> None:
        # the server takes 5 at once and queues none: a 6th concurrent request would get 503
        sim = await make_simulator(mailboxes=20, rest_queue_limit=0)
        sim.slow(0.05)
        async with CumiRestClient(sim.base_url, concurrency=4, max_attempts=1) as rest:
            await asyncio.gather(
                *(rest.request_notification(own(sim, a)) for a in list(sim.accounts) * 2)
            )
        assert sim.stats.rest_throttled == 0


class TestDelegate:
    """The delegate account resolves aliases and acts with userobjectid."""

    async def test_lookup_and_act_for_a_user(self, simulator: Simulator) -> None:
        async with CumiRestClient(simulator.base_url) as rest:
            provider = DelegateCredentials(delegate(simulator), rest.lookup_object_id)
            credential = await provider.credential_for("user0003")
            assert credential.user_object_id == simulator.accounts["user0003"].object_id
            subscription_id = await rest.request_notification(credential)
            with pytest.raises(MissingCredentials):
                await provider.credential_for("nobody")
        assert simulator.subscriptions.mailbox_of(subscription_id) == "user0003"


class TestListings:
    """All pages, the single-object quirk, the folder USN."""

    async def test_pages_and_quirk(self, make_simulator: MakeSimulator) -> None:
        sim = await make_simulator(mailboxes=2, initial_messages=7)
        alias = "user0001"
        sim.perform(alias, Op.DELETE)
        truth = sim.truth()[alias]
        counts = [len(truth["inbox"]), len(truth["deleted"])]
        # an odd count read two per page ends on a page of one: the single-object quirk
        assert any(n % 2 == 1 and n > 2 for n in counts), counts
        async with CumiRestClient(sim.base_url) as rest:
            credential = own(sim, alias)
            for folder, expected in (
                (Folder.INBOX, truth["inbox"]),
                (Folder.DELETED, truth["deleted"]),
            ):
                listed, pages = await rest.list_messages(folder, credential, page_size=2)
                assert {m.message_id: {"read": m.read} for m in listed} == {
                    k: {"read": v["read"]} for k, v in expected.items()
                }
                assert pages == max(1, -(-len(expected) // 2))
                assert all(m.arrival_time is not None for m in listed)
            info = await rest.folder_info(Folder.INBOX, credential)
        assert info.usn == truth["usn"]
