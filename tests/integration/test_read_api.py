"""The projector's read API over real sockets, served from real projections (Kafka only for the
projector's own wiring): every answer checked against the OpenAPI document, conditional GET,
cursor paging, bearer tokens and mutual TLS on a listener of its own, connection timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from fixtures.openapi import Answer, Contract
from fixtures.producing import generate
from fixtures.tls import TlsFiles
from fixtures.waiting import eventually
from multidict import CIMultiDict

from ingest.eventlog.topics import TopicNames, partition_for
from ingest.events import LogRecord
from ingest.ops.http import OpsServer
from ingest.projector import Projector, ProjectorSettings
from ingest.settings import SettingsSource, load_process, load_read_api
from ingest.state.projection import MailboxState, Projection
from ingest.state.read_api import ReadApi, openapi_document

pytestmark = pytest.mark.integration

PARTITIONS = 12
TOKEN = "a-read-api-token-0123456789"
STREAM = generate(events=800, mailboxes=30, seed=21)


class View:
    """The projector's side of the read API (`StateView`), over projections folded here."""

    def __init__(self, records: Iterable[LogRecord], owned: Iterable[int] = range(PARTITIONS)):
        self.partition_count = PARTITIONS
        self.by_partition = {n: Projection() for n in owned}
        self.catching_up: set[int] = set()
        for record in records:
            self.apply(record)

    @property
    def partitions(self) -> set[int]:
        return set(self.by_partition)

    def apply(self, record: LogRecord) -> None:
        projection = self.by_partition.get(partition_for(record.mailbox_id, PARTITIONS))
        if projection is not None:
            projection.apply(record)

    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None:
        for number, projection in self.by_partition.items():
            state = projection.get(mailbox_id)
            if state is not None and number not in self.catching_up:
                return number, state
        return None

    def projections(self) -> dict[int, Projection]:
        return {n: p for n, p in self.by_partition.items() if n not in self.catching_up}

    def ids(self) -> list[str]:
        return sorted(m for p in self.by_partition.values() for m in p.mailboxes)


class BrokenView(View):
    def find(self, mailbox_id: str) -> tuple[int, MailboxState] | None:
        raise RuntimeError("a bug in the projector")


@dataclass
class Served:
    ops: OpsServer
    api: ReadApi
    scheme: str = "http"

    @property
    def read_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops.port}"


@asynccontextmanager
async def serving(view: View, **env: str) -> AsyncIterator[Served]:
    source = SettingsSource.load({"CUMI_METRICS_PORT": "0", **env})
    process = load_process(source)
    ops = OpsServer(
        process.metrics_host, 0, ready={"restored": lambda: True}, timeouts=process.http_timeouts
    )
    api = ReadApi(view, load_read_api(source, process), ops, timeouts=process.http_timeouts)
    await ops.start()
    await api.start()
    try:
        yield Served(ops, api, "https" if "CUMI_READ_API_TLS_CERT_FILE" in env else "http")
    finally:
        await api.stop()
        await ops.stop()


async def fetch(
    http: aiohttp.ClientSession,
    base: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Answer:
    async with http.request(method, base + path, headers=headers) as resp:
        body = await resp.read()
        where = path.split("?", maxsplit=1)[0]
        return Answer(method, where, resp.status, CIMultiDict(resp.headers), body)


def token_file(tmp_path: Path, *tokens: str) -> str:
    path = tmp_path / "tokens"
    path.write_text("".join(f"{t}\n" for t in tokens))
    return str(path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(json.loads(openapi_document()))


def declared(contract: Contract) -> set[tuple[str, str, str]]:
    """(method, path template, status) of every response the document declares."""
    return {
        (method.upper(), path, code)
        for path, item in contract.document["paths"].items()
        for method, operation in item.items()
        for code in operation["responses"]
    }


class TestContract:
    """Every route's answers, successes and errors alike, are what the OpenAPI document says."""

    async def test_every_answer_matches_the_document(
        self, http: aiohttp.ClientSession, contract: Contract, tmp_path: Path
    ) -> None:
        view = View(STREAM.records, owned=range(6))
        known = view.ids()[0]
        foreign = next(
            f"nobody-{i}" for i in range(100) if partition_for(f"nobody-{i}", PARTITIONS) >= 6
        )
        answers: list[tuple[Answer, int]] = []

        async def expect(status: int, path: str, **kw: Any) -> Answer:
            answer = await fetch(http, served.read_url, path, **kw)
            answers.append((answer, status))
            return answer

        async with serving(view) as served:
            await expect(200, "/openapi.json")
            await expect(200, "/mailboxes")
            page = await expect(200, "/mailboxes?limit=5")
            await expect(200, f"/mailboxes?limit=5&after={json.loads(page.body)['next']}")
            for bad in ("limit=0", "limit=ten", "limit=1001", "lmit=5", "limit=1&limit=2"):
                await expect(400, f"/mailboxes?{bad}")
            await expect(400, "/mailboxes?after=" + "x" * 300)
            first = await expect(200, f"/mailboxes/{known}")
            await expect(304, f"/mailboxes/{known}", headers={"If-None-Match": first.etag()})
            await expect(404, "/mailboxes/nobody-here")
            await expect(404, f"/mailboxes/{foreign}")
            await expect(404, "/no/such/route")
            await expect(405, "/mailboxes", method="POST")
            await expect(405, f"/mailboxes/{known}", method="DELETE")
        async with serving(view, CUMI_READ_API_TOKEN_FILE=token_file(tmp_path, TOKEN)) as served:
            await expect(401, "/mailboxes")
            await expect(401, f"/mailboxes/{known}", headers={"Authorization": "Basic eDp5"})
            await expect(401, f"/mailboxes/{known}", headers={"Authorization": "Bearer wrong"})
            await expect(200, f"/mailboxes/{known}", headers={"Authorization": f"Bearer {TOKEN}"})
            await expect(200, "/openapi.json")  # the document needs no token
        async with serving(BrokenView(STREAM.records)) as served:
            await expect(500, f"/mailboxes/{known}")
        view.catching_up.add(partition_for(known, PARTITIONS))
        async with serving(view) as served:
            waiting = await expect(503, f"/mailboxes/{known}")
            listed = json.loads((await expect(200, "/mailboxes?limit=1000")).body)
        assert waiting.headers["Retry-After"] == "5"
        assert known not in {m["mailbox_id"] for m in listed["mailboxes"]}

        problems = [f"{a.method} {a.path}: {p}" for a, _ in answers for p in contract.check(a)]
        problems += [
            f"{a.method} {a.path}: status {a.status}, expected {want}"
            for a, want in answers
            if a.status != want
        ]
        problems += [
            f"{a.method} {a.path}: {a.status} is not problem+json"
            for a, _ in answers
            if a.status >= 400 and a.headers["Content-Type"] != "application/problem+json"
        ]
        assert problems == []
        covered = {
            (a.method, "/mailboxes/{mailbox_id}" if a.path.count("/") == 2 else a.path, str(s))
            for a, s in answers
        }
        assert declared(contract) - {d for d in declared(contract) if d[2] == "default"} <= covered

    async def test_the_served_document_is_the_packaged_one(
        self, http: aiohttp.ClientSession
    ) -> None:
        async with serving(View([])) as served:
            answer = await fetch(http, served.read_url, "/openapi.json")
        assert json.loads(answer.body) == json.loads(openapi_document())
        assert json.loads(answer.body)["openapi"] == "3.1.0"

    async def test_problem_details_name_the_mistake(self, http: aiohttp.ClientSession) -> None:
        view = View(STREAM.records, owned=range(6))
        async with serving(view) as served:
            bad = json.loads((await fetch(http, served.read_url, "/mailboxes?limit=0&x=1")).body)
            gone = json.loads((await fetch(http, served.read_url, "/mailboxes/nobody-1")).body)
            route = json.loads((await fetch(http, served.ops_url, "/nope")).body)
        assert bad["type"] == "urn:cumi-pipeline:problem:invalid-parameters"
        assert [p["name"] for p in bad["invalid_params"]] == ["x", "limit"]
        assert gone["type"] == "urn:cumi-pipeline:problem:unknown-mailbox"
        assert gone["partition"] == partition_for("nobody-1", PARTITIONS)
        assert gone["owned"] == (gone["partition"] < 6)
        assert route == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "no resource at /nope",
        }


class TestConditionalGet:
    """ETag and Last-Modified follow the mailbox's records; a matching validator gives 304."""

    async def test_validators(self, http: aiohttp.ClientSession) -> None:
        view = View(STREAM.records)
        mailbox_id = view.ids()[3]
        path = f"/mailboxes/{mailbox_id}"
        async with serving(view) as served:
            first = await fetch(http, served.read_url, path)
            etag, modified = first.etag(), first.headers["Last-Modified"]
            earlier = _http_date(_parse_http_date(modified) - dt.timedelta(seconds=1))

            async def status(**headers: str) -> int:
                return (await fetch(http, served.read_url, path, headers=headers)).status

            assert await status(**{"If-None-Match": etag}) == 304
            assert await status(**{"If-None-Match": f'"x", W/{etag}'}) == 304
            assert await status(**{"If-None-Match": "*"}) == 304
            assert await status(**{"If-None-Match": '"other"'}) == 200
            assert await status(**{"If-Modified-Since": modified}) == 304
            assert await status(**{"If-Modified-Since": earlier}) == 200
            # If-None-Match decides when both are given (RFC 9110 §13.2.2)
            assert (
                await status(**{"If-None-Match": '"other"', "If-Modified-Since": modified}) == 200
            )
            not_modified = await fetch(http, served.read_url, path, headers={"If-None-Match": etag})
            assert not_modified.body == b"" and not_modified.etag() == etag

            # a repeated event changes the answer (a counter) without moving the USN
            state = view.find(mailbox_id)
            assert state is not None
            usn = state[1].usn
            repeat = next(r for r in STREAM.records if r.mailbox_id == mailbox_id)
            view.apply(repeat)
            again = await fetch(http, served.read_url, path, headers={"If-None-Match": etag})
        assert again.status == 200
        assert again.etag() != etag
        assert json.loads(again.body)["usn"] == usn

    async def test_last_modified_is_never_in_the_future(self, http: aiohttp.ClientSession) -> None:
        view = View(STREAM.records)
        mailbox_id = view.ids()[0]
        found = view.find(mailbox_id)
        assert found is not None
        found[1].updated_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)  # a skewed clock
        async with serving(view) as served:
            answer = await fetch(http, served.read_url, f"/mailboxes/{mailbox_id}")
        modified = _parse_http_date(answer.headers["Last-Modified"])
        assert modified <= _parse_http_date(answer.headers["Date"])


class TestPaging:
    """The cursor walks every mailbox once, in id order, also while mailboxes appear and
    partitions come and go."""

    async def test_walk(self, http: aiohttp.ClientSession) -> None:
        view = View(STREAM.records)
        template = STREAM.records[0]
        async with serving(view) as served:
            seen, path = [], "/mailboxes?limit=7"
            while path:
                answer = await fetch(http, served.read_url, path)
                page = json.loads(answer.body)
                seen += [m["mailbox_id"] for m in page["mailboxes"]]
                assert page["total"] == len(view.ids())
                link = answer.headers.get("Link")
                assert (link is None) == (page["next"] is None)
                path = link.split(">")[0].lstrip("<") if link else ""
                if len(seen) == 14:  # mid-walk: one mailbox before the cursor, one after
                    for new in ("0-new-first", "zzzz-new-last"):
                        view.apply(dataclasses.replace(template, mailbox_id=new))
            assert seen == [m for m in view.ids() if m != "0-new-first"]
            assert "zzzz-new-last" in seen

            dropped = partition_for(seen[0], PARTITIONS)
            del view.by_partition[dropped]  # a rebalance took it away
            page = json.loads((await fetch(http, served.read_url, "/mailboxes?limit=1000")).body)
        assert [m["mailbox_id"] for m in page["mailboxes"]] == view.ids()
        assert dropped not in page["partitions"]


class TestAccess:
    """Tokens and TLS restrict the read API; /metrics and the probes stay open."""

    async def test_own_listener_with_tokens(
        self, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        tokens = token_file(tmp_path, TOKEN, TOKEN[::-1])  # two during a rotation
        view = View(STREAM.records)
        async with serving(view, CUMI_READ_API_PORT="0", CUMI_READ_API_TOKEN_FILE=tokens) as served:
            assert served.api.port != served.ops.port
            ops = [await fetch(http, served.ops_url, p) for p in ("/metrics", "/healthz/ready")]
            not_here = await fetch(http, served.ops_url, "/mailboxes")
            refused = await fetch(http, served.read_url, "/mailboxes")
            allowed = [
                await fetch(http, served.read_url, "/mailboxes", headers={"Authorization": a})
                for a in (f"Bearer {TOKEN}", f"bearer {TOKEN[::-1]}")
            ]
        assert [a.status for a in ops] == [200, 200]
        assert not_here.status == 404
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="cumi-read-api"'
        assert [a.status for a in allowed] == [200, 200]

    async def test_shared_listener_with_a_token(
        self, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        async with serving(
            View(STREAM.records), CUMI_READ_API_TOKEN_FILE=token_file(tmp_path, TOKEN)
        ) as served:
            assert served.api.port == served.ops.port
            metrics = await fetch(http, served.ops_url, "/metrics")
            refused = await fetch(http, served.ops_url, "/mailboxes")
        assert (metrics.status, refused.status) == (200, 401)

    async def test_mutual_tls(self, tls_files: TlsFiles) -> None:
        env = {
            "CUMI_READ_API_PORT": "0",
            "CUMI_READ_API_TLS_CERT_FILE": str(tls_files.cert),
            "CUMI_READ_API_TLS_KEY_FILE": str(tls_files.key),
            "CUMI_READ_API_TLS_CLIENT_CA_FILE": str(tls_files.ca),
        }
        trusting = ssl.create_default_context(cafile=tls_files.ca)
        with_cert = ssl.create_default_context(cafile=tls_files.ca)
        with_cert.load_cert_chain(tls_files.client_cert, tls_files.client_key)
        async with serving(View(STREAM.records), **env) as served:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=with_cert),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as client:
                answer = await fetch(client, served.read_url, "/mailboxes?limit=1")
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=trusting),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as anonymous:
                with pytest.raises(aiohttp.ClientError):
                    await fetch(anonymous, served.read_url, "/mailboxes?limit=1")
        assert answer.status == 200


class TestProjectorListeners:
    """The projector process's wiring: by default everything on the loopback; with
    CUMI_READ_API_PORT the read API on a listener of its own behind the token."""

    async def test_own_read_api_listener(
        self,
        kafka_bootstrap: str,
        fresh_topics: TopicNames,
        http: aiohttp.ClientSession,
        tmp_path: Path,
    ) -> None:
        settings = ProjectorSettings.load(
            env={
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_EVENTS_TOPIC": fresh_topics.events,
                "KAFKA_STATE_TOPIC": fresh_topics.state,
                "CUMI_PROJECTOR_GROUP_ID": f"listeners-{fresh_topics.events}",
                "CUMI_METRICS_PORT": "0",
                "CUMI_READ_API_PORT": "0",
                "CUMI_READ_API_TOKEN_FILE": token_file(tmp_path, TOKEN),
            }
        )
        async with Projector(settings) as projector:
            await eventually(lambda: projector.ready, within=60, what="projector ready")
            assert projector.ops.address == projector.read_api.address == "127.0.0.1"
            assert projector.read_api.port != projector.ops.port
            ops = f"http://127.0.0.1:{projector.ops.port}"
            read = f"http://127.0.0.1:{projector.read_api.port}"
            ready = await fetch(http, ops, "/healthz/ready")
            not_here = await fetch(http, ops, "/mailboxes")
            refused = await fetch(http, read, "/mailboxes")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            page = await fetch(http, read, "/mailboxes", headers=auth)
        assert (ready.status, not_here.status, refused.status, page.status) == (200, 404, 401, 200)
        assert json.loads(page.body)["partitions"] == list(range(PARTITIONS))


class TestConnectionTimeouts:
    """Half a request header, an idle keep-alive connection and a body that never ends are
    closed by the server within the configured bounds, on both listeners."""

    TIMEOUTS: ClassVar[dict[str, str]] = {
        "CUMI_HTTP_IDLE_TIMEOUT_SECONDS": "0.5",
        "CUMI_HTTP_BODY_TIMEOUT_SECONDS": "0.5",
    }

    @pytest.mark.parametrize("listener", ["ops", "read"])
    async def test_partial_and_idle_connections_are_closed(self, listener: str) -> None:
        async with serving(View([]), CUMI_READ_API_PORT="0", **self.TIMEOUTS) as served:
            port = served.ops.port if listener == "ops" else served.api.port
            assert port is not None
            half = b"GET /healthz/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */"
            assert await _closed_after(port, half) == b""
            idle = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            assert (await _closed_after(port, idle)).startswith(b"HTTP/1.1 ")
            endless = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab"
            assert (await _closed_after(port, endless)).startswith(b"HTTP/1.1 ")


async def _closed_after(port: int, sent: bytes, within: float = 10.0) -> bytes:
    """Everything the server answers to `sent` until it closes the connection (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)  # read() returns at EOF
    finally:
        writer.close()


def _parse_http_date(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=dt.UTC)


def _http_date(moment: dt.datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
