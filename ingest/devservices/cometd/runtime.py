"""The reference CometD server's runtime: its jars and its compiled main class, in a cache.

`fetch()` lets Maven copy the runtime classpath pom.xml describes (CometD's Java server on Jetty)
into `<cache>/cometd-<cometd>-jetty-<jetty>/lib`, then compiles RefCometdServer.java against it
into `classes/`, once (see ingest.devservices.maven). The marker also holds the Java source's
hash: a changed source is recompiled without asking Maven again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
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
    resource_bytes,
)
from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

MAIN_CLASS = "RefCometdServer"
SOURCE = f"{MAIN_CLASS}.java"
JAVAC_TIMEOUT_S = 180.0
WHAT = "the reference CometD server"
# jars whose absence means Maven "succeeded" without giving us a runnable server
_REQUIRED_JAR_PREFIXES = (
    "cometd-java-server-http-jakarta-",
    "cometd-java-server-websocket-jetty-",
    "jetty-ee10-servlet-",
    "jetty-util-ajax-",
)


@cache
def versions() -> tuple[str, str]:
    """(CometD, Jetty) versions pinned in pom.xml, the single place they are written."""
    return pom_property(__package__, "cometd.version"), pom_property(__package__, "jetty.version")


@dataclass(frozen=True, slots=True)
class CometdRuntime:
    """A complete, fetched and compiled reference server."""

    home: Path
    """`<cache>/cometd-<version>-jetty-<version>`."""
    java: Java

    @property
    def classpath(self) -> str:
        # the launcher expands the wildcard; it keeps the command line short
        return f"{self.home / 'lib' / '*'}{os.pathsep}{self.home / 'classes'}"


def runtime_home(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    cometd, jetty = versions()
    return cache_root(cache_dir) / f"cometd-{cometd}-jetty-{jetty}"


def fetch(cache_dir: str | os.PathLike[str] | None = None) -> CometdRuntime:
    """Make sure the jars and the compiled main class are in the cache (idempotent).

    Needs Maven only when the jars are not cached yet and javac only when the class is not;
    always needs Java >= 17 (Jetty 12).
    """
    home = runtime_home(cache_dir)
    marker = {"source_sha256": hashlib.sha256(resource_bytes(__package__, SOURCE)).hexdigest()}
    java = fetch_once(home, __package__, what=WHAT, fetch=_download, build=_compile, marker=marker)
    return CometdRuntime(home=home, java=java)


def find_javac(java: Java) -> Path:
    """The compiler of the JDK `java` belongs to, else the one on PATH."""
    beside = java.path.resolve().parent / "javac"
    if beside.is_file():
        return beside
    found = shutil.which("javac")
    if found is None:
        raise DevServiceError(
            f"{WHAT} is compiled at fetch time and needs javac (a JDK, not only a JRE): "
            "install one, e.g. `apt-get install openjdk-17-jdk-headless`"
        )
    return Path(found)


def _download(home: Path) -> None:
    cometd, jetty = versions()
    log.info(
        "fetching CometD %s on Jetty %s from Maven Central into %s (first run only)",
        cometd,
        jetty,
        home,
    )
    started = time.monotonic()
    jars = copy_dependencies(home, __package__, _REQUIRED_JAR_PREFIXES, what=WHAT)
    log.info("CometD runtime fetched: %d jars in %.1f s", jars, time.monotonic() - started)


def _compile(home: Path, java: Java) -> None:
    """javac the shipped source into `<home>/classes` (replaced whole)."""
    javac = find_javac(java)
    source = home / SOURCE
    source.write_bytes(resource_bytes(__package__, SOURCE))
    partial = home / "classes.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    argv = [str(javac), "-nowarn", "-d", str(partial), "-cp", str(home / "lib" / "*"), str(source)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=JAVAC_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DevServiceError(f"compiling {source} failed: {e}") from e
    if done.returncode != 0:
        raise DevServiceError(f"javac failed on {source}:\n{done.stdout}{done.stderr}")
    shutil.rmtree(home / "classes", ignore_errors=True)
    partial.rename(home / "classes")
    log.debug("compiled %s into %s", source, home / "classes")
