"""The local registry's runtime: Apicurio Registry's distribution, fetched once into a cache.

Apicurio Registry is not on PyPI (nor is Confluent's registry on Maven Central). `fetch()` lets
Maven unpack `io.apicurio:apicurio-registry-app:<version>:zip:all` (a runner jar whose manifest
names the jars in `lib/`, in-memory storage) from Maven Central into `<cache>/apicurio-<version>/`.
Caching, locking and the Java/Maven checks are the local Kafka broker's (`ingest.localkafka`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.errors import LocalRegistryError
from ingest.localkafka.runtime import (
    Java,
    cache_root,
    fetch_once,
    pom_marker,
    pom_property,
    resource_text,
    run_maven,
)

log = logging.getLogger(__name__)

_NEEDED_BY = "the local schema registry"
_PAYLOAD = "dist"


@cache
def apicurio_version() -> str:
    """The Apicurio Registry version pinned in pom.xml."""
    return pom_property("apicurio.version", __package__)


@dataclass(frozen=True, slots=True)
class RegistryRuntime:
    """A complete, unpacked Apicurio Registry distribution."""

    home: Path
    """`<cache>/apicurio-<version>`."""
    version: str
    java: Java

    @property
    def dist(self) -> Path:
        """The unpacked zip: the runner jar and `lib/`."""
        return self.home / _PAYLOAD

    @property
    def runner_jar(self) -> Path:
        return self.dist / f"apicurio-registry-app-{self.version}-runner.jar"


def fetch(cache_dir: str | os.PathLike[str] | None = None) -> RegistryRuntime:
    """Make sure the distribution is in the cache (idempotent) and return the runtime."""
    version = apicurio_version()
    home = cache_root(cache_dir) / f"apicurio-{version}"
    marker = pom_marker(__package__, apicurio_version=version)
    java = fetch_once(home, marker, _PAYLOAD, _download, needed_by=_NEEDED_BY)
    return RegistryRuntime(home=home, version=version, java=java)


def _download(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_text(resource_text("pom.xml", __package__), encoding="utf-8")
    partial = home / f"{_PAYLOAD}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # the unpack goal skips artifacts its markers (under target/) say it unpacked before
    shutil.rmtree(home / "target", ignore_errors=True)
    log.info(
        "fetching Apicurio Registry %s from Maven Central into %s (first run only, ~150 MB)",
        apicurio_version(),
        home,
    )
    started = time.monotonic()
    argv = ["mvn", "-B", "-f", str(pom), "dependency:unpack", f"-DoutputDirectory={partial}"]
    run_maven(argv, what=f"Apicurio Registry {apicurio_version()}")
    runner = partial / f"apicurio-registry-app-{apicurio_version()}-runner.jar"
    if not runner.is_file() or not (partial / "lib").is_dir():
        raise LocalRegistryError(f"Maven finished but {partial} lacks {runner.name} or lib/")
    shutil.rmtree(home / _PAYLOAD, ignore_errors=True)
    partial.rename(home / _PAYLOAD)
    shutil.rmtree(home / "target", ignore_errors=True)
    log.info("fetched %s in %.1f s", runner.name, time.monotonic() - started)
