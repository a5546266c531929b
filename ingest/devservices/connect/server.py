"""`LocalConnect`: one Kafka Connect standalone worker on 127.0.0.1, running the connectors given.

Standalone mode: the worker's configuration and each connector's are properties files written
into the work directory; source offsets go to a file there. It is ready when its REST API
(`GET /connectors/<name>/status`) reports every connector and its tasks RUNNING.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from ingest.devservices.connect.runtime import ConnectRuntime, fetch, versions
from ingest.devservices.jvm import LocalJvm
from ingest.devservices.maven import resource_text
from ingest.devservices.process import HOST, free_ports, port_is_free
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
JVM_OPTIONS = ("-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def apicurio_avro_converter(ccompat_url: str) -> dict[str, str]:
    """Settings of Apicurio's `AvroConverter` (prefix them with `value.converter.`) that read the
    Confluent wire format of registry mode: a 4-byte schema id (`as-confluent`) that is the
    registry's content id (`use-id`, what the Confluent-compatible API hands out), found in the
    value, not in Kafka headers. It talks to Apicurio's own API, next to the ccompat one."""
    parts = urlsplit(ccompat_url)
    return {
        "apicurio.registry.url": f"{parts.scheme}://{parts.netloc}/apis/registry/v2",
        "apicurio.registry.as-confluent": "true",
        "apicurio.registry.use-id": "contentId",
        "apicurio.registry.headers.enabled": "false",
    }


def _properties(values: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


class LocalConnect(LocalJvm):
    """`async with LocalConnect(bootstrap, worker, connectors) as connect: …`.

    `worker`: worker settings on top of the defaults (converters above all); `connectors`: each
    connector's settings, `name` included. Its port is a free one unless given.
    """

    name = "Kafka Connect"
    port_taken = "Address already in use"

    def __init__(
        self,
        bootstrap: str,
        worker: Mapping[str, str],
        connectors: Sequence[Mapping[str, str]],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        super().__init__(
            work_dir,
            temp_prefix="cumi-connect-",
            ready_timeout=ready_timeout,
            stop_timeout=STOP_TIMEOUT_S,
            detach=False,
            ports_pinned=port is not None,
        )
        if not connectors or any("name" not in c for c in connectors):
            raise DevServiceError("LocalConnect needs connectors, each with a name")
        self._bootstrap = bootstrap
        self._worker = dict(worker)
        self._connectors = [dict(c) for c in connectors]
        self._cache_dir = cache_dir
        self._runtime: ConnectRuntime | None = None
        self._port = port if port is not None else free_ports(1)[0]

    @property
    def url(self) -> str:
        """The worker's REST API."""
        return f"http://{HOST}:{self._port}"

    @property
    def address(self) -> str:
        return self.url

    @property
    def loopback_ports(self) -> tuple[int, ...]:
        return (self._port,)

    @property
    def log_path(self) -> Path:
        return self._work_dir / "connect.out"

    @property
    def identity(self) -> tuple[str, ...]:
        return (MAIN_CLASS, str(self._work_dir / "worker.properties"))

    @property
    def title(self) -> str:
        kafka, apicurio = versions()
        return f"Kafka Connect {kafka} (Apicurio converter {apicurio})"

    async def _prepare(self) -> None:
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(fetch, self._cache_dir)
        self._work_dir.mkdir(parents=True, exist_ok=True)
        if not self._ports_pinned and not port_is_free(self._port):
            self._choose_ports()
        (self._work_dir / "log4j2.properties").write_text(
            resource_text(__package__, "log4j2.properties"), encoding="utf-8"
        )
        worker = {
            "bootstrap.servers": self._bootstrap,
            "listeners": self.url,
            "offset.storage.file.filename": str(self._work_dir / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            **self._worker,
        }
        (self._work_dir / "worker.properties").write_text(_properties(worker), encoding="utf-8")
        for connector in self._connectors:
            path = self._work_dir / f"connector-{connector['name']}.properties"
            path.write_text(_properties(connector), encoding="utf-8")

    def _command(self) -> list[str]:
        if self._runtime is None:
            raise DevServiceError("Kafka Connect's runtime is not fetched yet: start() first")
        return [
            str(self._runtime.java.path),
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self._work_dir / 'log4j2.properties'}",
            "-cp",
            self._runtime.classpath,
            MAIN_CLASS,
            str(self._work_dir / "worker.properties"),
            *(str(self._work_dir / f"connector-{c['name']}.properties") for c in self._connectors),
        ]

    async def _ready(self, output: str) -> bool:
        async with aiohttp.ClientSession(timeout=_PROBE_TIMEOUT) as session:
            for connector in self._connectors:
                status = await self.status(connector["name"], session)
                if status is None or not _running(status):
                    return False
        return True

    def _choose_ports(self) -> None:
        self._port = free_ports(1)[0]

    async def status(
        self, connector: str, session: aiohttp.ClientSession | None = None
    ) -> dict[str, object] | None:
        """The REST API's status of `connector`; None while it does not answer."""
        own = session is None
        session = session or aiohttp.ClientSession(timeout=_PROBE_TIMEOUT)
        try:
            async with session.get(f"{self.url}/connectors/{connector}/status") as response:
                if response.status != 200:
                    return None
                answer = await response.json(content_type=None)
                return answer if isinstance(answer, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        finally:
            if own:
                await session.close()


def _running(status: Mapping[str, object]) -> bool:
    connector = status.get("connector")
    tasks = status.get("tasks")
    return (
        isinstance(connector, dict)
        and connector.get("state") == "RUNNING"
        and isinstance(tasks, list)
        and bool(tasks)
        and all(isinstance(t, dict) and t.get("state") == "RUNNING" for t in tasks)
    )
