"""`LocalRegistry`: one real Apicurio Registry on 127.0.0.1, spoken to through its Confluent API.

It runs the runner jar `fetch()` cached, with in-memory storage (schemas do not survive a stop),
and is ready when `GET <url>/subjects` answers 200. The port is a free one chosen once and kept
across stop/start; another process taking it before the first start only means another port.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiohttp

from ingest.devservices.jvm import LocalJvm
from ingest.devservices.process import HOST, free_ports, port_is_free
from ingest.devservices.registry.runtime import RegistryRuntime, apicurio_version, fetch
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

CCOMPAT_PATH = "/apis/ccompat/v7"
"""Where Apicurio 2.x serves the Confluent Schema Registry API (its v7 flavour)."""
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# measured: 147 MB RSS idle, ~165 MB after 700 requests; C1 only: ~1 s sooner ready, 40 MB less
HEAP_OPTIONS = ("-Xms32m", "-Xmx256m")
JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
JVM_OPTIONS_ENV = "CUMI_REGISTRY_JVM_OPTS"
"""Extra JVM options, appended last (e.g. `-Xmx512m`)."""
# Quarkus' own defaults keep a pool of 20 H2 connections and listen on every interface. Apicurio
# tells schemas apart by their bytes unless told otherwise: a serializer that strips the trailing
# newline would register a second version with a new id. Confluent's registry compares parsed
# schemas; the canonical hash makes Apicurio do so too (within a subject).
QUARKUS_OPTIONS = (
    f"-Dquarkus.http.host={HOST}",
    "-Dregistry.ccompat.use-canonical-hash=true",
    "-Dquarkus.datasource.jdbc.initial-size=2",
    "-Dquarkus.datasource.jdbc.min-size=2",
    "-Dquarkus.datasource.jdbc.max-size=10",
)
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def registry_command(runtime: RegistryRuntime, port: int) -> list[str]:
    """The full `java … -jar <runner jar>` command line for a registry on `port`."""
    return [
        str(runtime.java.path),
        *HEAP_OPTIONS,
        *JVM_OPTIONS,
        *QUARKUS_OPTIONS,
        f"-Dquarkus.http.port={port}",
        *os.environ.get(JVM_OPTIONS_ENV, "").split(),
        "-jar",
        str(runtime.runner_jar),
    ]


class LocalRegistry(LocalJvm):
    """Apicurio Registry on 127.0.0.1: `async with LocalRegistry() as registry: … registry.url …`.

    `port`: free one when not given. `work_dir`: where its output goes (a temporary one, deleted
    by `cleanup()` / `async with`, when not given). `detach`: the JVM gets a session of its own and
    survives this process (`ingest registry start`). `restart()` keeps the port
    (not the schemas).
    """

    name = "the schema registry"
    port_taken = "seems to be in use by another process"

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        detach: bool = False,
    ) -> None:
        super().__init__(
            work_dir,
            temp_prefix="cumi-registry-",
            ready_timeout=ready_timeout,
            stop_timeout=stop_timeout,
            detach=detach,
            ports_pinned=port is not None,
        )
        self._cache_dir = cache_dir
        self._runtime: RegistryRuntime | None = None
        self._port = port if port is not None else free_ports(1)[0]

    # -- what callers read ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Confluent-compatible base URL, for `schema.registry.url` / `SchemaRegistryClient`."""
        return f"http://{HOST}:{self._port}{CCOMPAT_PATH}"

    @property
    def address(self) -> str:
        return self.url

    @property
    def port(self) -> int:
        return self._port

    @property
    def loopback_ports(self) -> tuple[int, ...]:
        return (self._port,)

    @property
    def log_path(self) -> Path:
        """The JVM's stdout and stderr, where Quarkus logs."""
        return self._work_dir / "registry.out"

    @property
    def runner_jar(self) -> Path:
        """The jar the JVM runs (known once `start()` fetched the runtime)."""
        if self._runtime is None:
            raise DevServiceError("the registry's runtime is not fetched yet: start() first")
        return self._runtime.runner_jar

    @property
    def identity(self) -> tuple[str, ...]:
        # the jar and the port tell this registry from any other process, and from another registry
        return (str(self.runner_jar), f"-Dquarkus.http.port={self._port}")

    @property
    def title(self) -> str:
        return f"Apicurio Registry {apicurio_version()}"

    # -- LocalJvm's hooks -------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(fetch, self._cache_dir)
        self._work_dir.mkdir(parents=True, exist_ok=True)
        if not self._ports_pinned and not port_is_free(self._port):
            self._choose_ports()

    def _command(self) -> list[str]:
        if self._runtime is None:
            raise DevServiceError("the registry's runtime is not fetched yet: start() first")
        return registry_command(self._runtime, self._port)

    async def _ready(self, output: str) -> bool:
        async with aiohttp.ClientSession(timeout=_PROBE_TIMEOUT) as session:
            return await _answers(session, f"{self.url}/subjects")

    def _choose_ports(self) -> None:
        self._port = free_ports(1)[0]


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether `url` answers 200 with a JSON list (the subjects: Apicurio's API, not a stranger)."""
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return False
            return isinstance(await response.json(content_type=None), list)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
