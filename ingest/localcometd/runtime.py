"""The reference CometD server's runtime: its jars and its compiled main class, in a cache.

`fetch()` lets Maven copy the runtime classpath pom.xml describes (CometD's Java server on Jetty)
into `<cache>/cometd-<cometd>-jetty-<jetty>/lib`, then compiles RefCometdServer.java against it
into `classes/`. A marker file written last, holding the hashes of both package files, makes a
second run a no-op; a changed Java source is recompiled without asking Maven again.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.errors import LocalBrokerError
from ingest.localkafka.runtime import Java, cache_root, check_tools, copy_dependencies, locked

log = logging.getLogger(__name__)

MAIN_CLASS = "RefCometdServer"
SOURCE = f"{MAIN_CLASS}.java"
JAVAC_TIMEOUT_S = 180.0
WHAT = "the reference CometD server"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
# jars whose absence means Maven "succeeded" without giving us a runnable server
_REQUIRED_JAR_PREFIXES = (
    "cometd-java-server-http-jakarta-",
    "cometd-java-server-websocket-jetty-",
    "jetty-ee10-servlet-",
    "jetty-util-ajax-",
)


def resource_bytes(name: str) -> bytes:
    """A file shipped in this package (pom.xml, RefCometdServer.java)."""
    return importlib.resources.files(__package__).joinpath(name).read_bytes()


@cache
def versions() -> tuple[str, str]:
    """(CometD, Jetty) versions pinned in pom.xml, the single place they are written."""
    root = ET.fromstring(resource_bytes("pom.xml"))
    found = [
        (root.findtext(f"m:properties/m:{name}.version", namespaces=_POM_NS) or "").strip()
        for name in ("cometd", "jetty")
    ]
    if not all(found):
        raise LocalBrokerError(
            "ingest/localcometd/pom.xml lacks <cometd.version> or <jetty.version>"
        )
    return found[0], found[1]


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
    if _read_marker(home) == _marker():
        return CometdRuntime(home=home, java=check_tools(need_maven=False, what=WHAT))
    with locked(home):
        marker = _read_marker(home)
        if marker == _marker():
            log.info("another process fetched the reference CometD server meanwhile")
            return CometdRuntime(home=home, java=check_tools(need_maven=False, what=WHAT))
        jars_ok = marker.get("pom_sha256") == _marker()["pom_sha256"] and (home / "lib").is_dir()
        java = check_tools(need_maven=not jars_ok, what=WHAT)
        javac = find_javac(java)
        (home / ".complete").unlink(missing_ok=True)
        if not jars_ok:
            _download(home)
        _compile(home, javac)
        # written last: its presence means the folder is complete
        (home / ".complete").write_text(json.dumps(_marker()), encoding="utf-8")
    return CometdRuntime(home=home, java=java)


def _marker() -> dict[str, str]:
    return {
        "pom_sha256": hashlib.sha256(resource_bytes("pom.xml")).hexdigest(),
        "source_sha256": hashlib.sha256(resource_bytes(SOURCE)).hexdigest(),
    }


def _read_marker(home: Path) -> dict[str, str]:
    try:
        marker = json.loads((home / ".complete").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def find_javac(java: Java) -> Path:
    """The compiler of the JDK `java` belongs to, else the one on PATH."""
    beside = java.path.resolve().parent / "javac"
    if beside.is_file():
        return beside
    found = shutil.which("javac")
    if found is None:
        raise LocalBrokerError(
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
    pom = resource_bytes("pom.xml").decode("utf-8")
    jars = copy_dependencies(home, pom, _REQUIRED_JAR_PREFIXES, what=WHAT)
    log.info("CometD runtime fetched: %d jars in %.1f s", jars, time.monotonic() - started)


def _compile(home: Path, javac: Path) -> None:
    """javac the shipped source into `<home>/classes` (replaced whole)."""
    source = home / SOURCE
    source.write_bytes(resource_bytes(SOURCE))
    partial = home / "classes.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    argv = [str(javac), "-nowarn", "-d", str(partial), "-cp", str(home / "lib" / "*"), str(source)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=JAVAC_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LocalBrokerError(f"compiling {source} failed: {e}") from e
    if done.returncode != 0:
        raise LocalBrokerError(f"javac failed on {source}:\n{done.stdout}{done.stderr}")
    shutil.rmtree(home / "classes", ignore_errors=True)
    partial.rename(home / "classes")
    log.debug("compiled %s into %s", source, home / "classes")
