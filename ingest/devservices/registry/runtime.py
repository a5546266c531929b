"""The local registry's runtime: Apicurio Registry's distribution, fetched once into a cache.

Apicurio Registry is not on PyPI (nor is Confluent's registry on Maven Central). `fetch()` lets
Maven unpack `io.apicurio:apicurio-registry-app:<version>:zip:all` (a runner jar whose manifest
names the jars in `lib/`, in-memory storage) from Maven Central into `<cache>/apicurio-<version>/`
(see ingest.devservices.maven).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.devservices.maven import Java, cache_root, fetch_once, pom_property, unpack

log = logging.getLogger(__name__)

WHAT = "the local schema registry"


@cache
def apicurio_version() -> str:
    """The Apicurio Registry version pinned in pom.xml."""
    return pom_property(__package__, "apicurio.version")


def _runner_name(version: str) -> str:
    return f"apicurio-registry-app-{version}-runner.jar"


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
        return self.home / "dist"

    @property
    def runner_jar(self) -> Path:
        return self.dist / _runner_name(self.version)


def fetch(cache_dir: str | os.PathLike[str] | None = None) -> RegistryRuntime:
    """Make sure the distribution is in the cache (idempotent) and return the runtime."""
    version = apicurio_version()
    home = cache_root(cache_dir) / f"apicurio-{version}"
    marker = {"apicurio_version": version}
    java = fetch_once(home, __package__, what=WHAT, fetch=_download, payload="dist", marker=marker)
    return RegistryRuntime(home=home, version=version, java=java)


def _download(home: Path) -> None:
    version = apicurio_version()
    log.info(
        "fetching Apicurio Registry %s from Maven Central into %s (first run only, ~150 MB)",
        version,
        home,
    )
    started = time.monotonic()
    runner = _runner_name(version)
    unpack(home, __package__, (runner, "lib"), what=f"Apicurio Registry {version}")
    log.info("fetched %s in %.1f s", runner, time.monotonic() - started)
