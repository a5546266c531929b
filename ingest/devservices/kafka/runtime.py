"""The local Kafka's runtime: the Kafka jars in a cache.

Apache Kafka is not on PyPI. `fetch_jars()` lets Maven copy the runtime classpath of `kafka_2.13`
(plus `kafka-tools` and a Log4j 2 binding, see pom.xml) from Maven Central into
`<cache>/kafka-<version>/lib`, once (see ingest.devservices.maven).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.devservices.maven import (
    Java,
    cache_root,
    copy_dependencies,
    fetch_once,
    pom_property,
    resource_text,
)

log = logging.getLogger(__name__)

WHAT = "the local Kafka broker"
# jars whose absence means Maven "succeeded" without giving us a runnable broker
_REQUIRED_JAR_PREFIXES = ("kafka_2.13-", "kafka-tools-", "kafka-clients-", "log4j-slf4j2-impl-")


def package_text(name: str) -> str:
    """A file shipped in this package (log4j2.properties, the server.properties templates)."""
    return resource_text(__package__, name)


@cache
def kafka_version() -> str:
    """The Kafka version pinned in pom.xml."""
    return pom_property(__package__, "kafka.version")


@dataclass(frozen=True, slots=True)
class KafkaRuntime:
    """A complete, fetched Kafka classpath."""

    home: Path
    """`<cache>/kafka-<version>`."""
    version: str
    java: Java

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def classpath(self) -> str:
        # the launcher expands the wildcard; it keeps the command line short
        return str(self.lib / "*")

    @property
    def class_archive(self) -> Path:
        """AppCDS archive for this exact JVM (an archive from another JVM build is refused)."""
        return self.home / f"classes-java-{self.java.version}.jsa"


def fetch_jars(cache_dir: str | os.PathLike[str] | None = None) -> KafkaRuntime:
    """Make sure the Kafka jars are in the cache (idempotent) and return the runtime."""
    version = kafka_version()
    home = cache_root(cache_dir) / f"kafka-{version}"
    marker = {"kafka_version": version}
    java = fetch_once(home, __package__, what=WHAT, fetch=_download, marker=marker)
    return KafkaRuntime(home=home, version=version, java=java)


def _download(home: Path) -> None:
    log.info(
        "fetching the Apache Kafka %s runtime from Maven Central into %s "
        "(first run only, typically under a minute)",
        kafka_version(),
        home,
    )
    started = time.monotonic()
    jars = copy_dependencies(home, __package__, _REQUIRED_JAR_PREFIXES, what="the Kafka runtime")
    # class-data archives record the jars they were made from; the JVM ignores stale ones
    for archive in home.glob("classes-*.jsa"):
        archive.unlink()
    log.info("Kafka runtime ready: %d jars in %.1f s", jars, time.monotonic() - started)
