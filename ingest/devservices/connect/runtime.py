"""The test Kafka Connect's runtime: connect-runtime, connect-file and Apicurio Registry's Avro
converter with their dependencies, copied once by Maven into `<cache>/connect-<kafka>-apicurio-
<apicurio>/lib` (see ingest.devservices.maven). One classpath: the converter and the connector
are found on it, no plugin.path is needed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.devservices.maven import Java, cache_root, copy_dependencies, fetch_once, pom_property

log = logging.getLogger(__name__)

WHAT = "the test Kafka Connect worker"
# jars whose absence means Maven "succeeded" without giving us a runnable worker
_REQUIRED_JAR_PREFIXES = (
    "connect-runtime-",
    "connect-file-",
    "apicurio-registry-utils-converter-",
    "log4j-slf4j2-impl-",
)


@cache
def versions() -> tuple[str, str]:
    """(Kafka, Apicurio Registry) versions pinned in pom.xml."""
    return pom_property(__package__, "kafka.version"), pom_property(__package__, "apicurio.version")


@dataclass(frozen=True, slots=True)
class ConnectRuntime:
    """A complete, fetched Connect classpath."""

    home: Path
    java: Java

    @property
    def classpath(self) -> str:
        return str(self.home / "lib" / "*")


def fetch(cache_dir: str | os.PathLike[str] | None = None) -> ConnectRuntime:
    """Make sure the jars are in the cache (idempotent) and return the runtime."""
    kafka, apicurio = versions()
    home = cache_root(cache_dir) / f"connect-{kafka}-apicurio-{apicurio}"
    marker = {"kafka_version": kafka, "apicurio_version": apicurio}
    java = fetch_once(home, __package__, what=WHAT, fetch=_download, marker=marker)
    return ConnectRuntime(home=home, java=java)


def _download(home: Path) -> None:
    log.info(
        "fetching Kafka Connect and Apicurio's Avro converter from Maven Central into %s", home
    )
    started = time.monotonic()
    jars = copy_dependencies(home, __package__, _REQUIRED_JAR_PREFIXES, what=WHAT)
    log.info("Kafka Connect ready: %d jars in %.1f s", jars, time.monotonic() - started)
