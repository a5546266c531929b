"""The local broker's runtime: Java and Maven on the machine, and the Kafka jars in a cache.

Apache Kafka is not on PyPI. `fetch()` lets Maven copy the runtime classpath of `kafka_2.13` (plus
`kafka-tools` and a Log4j 2 binding, see pom.xml) from Maven Central into
`<cache>/kafka-<version>/lib`, once: a marker file written last makes a second run a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ingest.errors import LocalBrokerError

log = logging.getLogger(__name__)

MIN_JAVA = 17
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven"
MAVEN_TIMEOUT_S = 900.0
_PROGRESS_EVERY_S = 5.0
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
# jars whose absence means Maven "succeeded" without giving us a runnable broker
_REQUIRED_JAR_PREFIXES = ("kafka_2.13-", "kafka-tools-", "kafka-clients-", "log4j-slf4j2-impl-")


def resource_text(name: str, package: str = __package__) -> str:
    """A file shipped in `package`, by default this one (pom.xml, log4j2.properties, …)."""
    return importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")


def pom_property(name: str, package: str = __package__) -> str:
    """A plain `<properties>` value of `package`'s pom.xml: the one place a version is written."""
    root = ET.fromstring(resource_text("pom.xml", package))
    value = root.findtext(f"m:properties/m:{name}", namespaces=_POM_NS)
    if not value:
        where = package.replace(".", "/")
        raise LocalBrokerError(f"{where}/pom.xml has no <{name}> property")
    return value.strip()


@cache
def kafka_version() -> str:
    """The Kafka version pinned in pom.xml."""
    return pom_property("kafka.version")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else `$CUMI_CACHE_DIR`, else `~/.cache/cumi-pipeline` (outside the checkout)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CUMI_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cumi-pipeline"


@dataclass(frozen=True, slots=True)
class Java:
    """The `java` launcher the broker runs with."""

    path: Path
    major: int
    version: str
    """The quoted version string of `java -version`, e.g. 17.0.15."""


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


def _java_candidate() -> Path | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    return Path(found) if found else None


def parse_java_version(output: str) -> tuple[int, str] | None:
    """(major, version) from `java -version` output; `1.8.0_392` is Java 8."""
    match = re.search(r'version "([^"]+)"', output)
    if not match:
        return None
    version = match.group(1)
    parts = re.findall(r"\d+", version)
    if not parts:
        return None
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    return major, version


def _probe_java(path: Path) -> Java | str:
    try:
        done = subprocess.run(
            [str(path), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{path} -version failed: {e}"
    parsed = parse_java_version(done.stderr + done.stdout)
    if parsed is None:
        return f"cannot read the Java version from `{path} -version`"
    major, version = parsed
    if major < MIN_JAVA:
        return f"{path} is Java {version}; Java {MIN_JAVA} or newer is needed"
    return Java(path=path, major=major, version=version)


def check_tools(*, need_maven: bool, what: str = "the local Kafka broker") -> Java:
    """The Java to run `what` with; one LocalBrokerError naming everything missing otherwise."""
    problems: list[str] = []
    java_path = _java_candidate()
    java: Java | None = None
    if java_path is None:
        problems.append("java not found (neither $JAVA_HOME/bin/java nor on PATH)")
    else:
        probed = _probe_java(java_path)
        if isinstance(probed, str):
            problems.append(probed)
        else:
            java = probed
    if need_maven and shutil.which("mvn") is None:
        problems.append("mvn (Apache Maven) not found on PATH")
    if problems or java is None:
        raise LocalBrokerError(
            f"{what} needs Java >= {MIN_JAVA} and Maven: "
            + "; ".join(problems)
            + f". Install them, e.g. `{INSTALL_HINT}`."
        )
    return java


def pom_marker(package: str = __package__, **values: str) -> dict[str, str]:
    """What a completed fetch records: `values` and its pom's hash (a changed pom refetches)."""
    pom = resource_text("pom.xml", package).encode()
    return {**values, "pom_sha256": hashlib.sha256(pom).hexdigest()}


def _is_complete(home: Path, marker: Mapping[str, str], payload: str) -> bool:
    try:
        done = json.loads((home / ".complete").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(done == marker and (home / payload).exists())


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """Serialize fetches: two test sessions starting at once must not both run Maven here."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with home.with_name(home.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_once(
    home: Path,
    marker: Mapping[str, str],
    payload: str,
    download: Callable[[Path], None],
    *,
    needed_by: str,
) -> Java:
    """Run `download(home)` unless an earlier run completed it; return the Java to run it with.

    `home/payload` and a `.complete` file equal to `marker` (written last) mean complete. Needs
    Maven only when a download is due; always needs Java >= 17.
    """
    if _is_complete(home, marker, payload):
        return check_tools(need_maven=False, what=needed_by)
    java = check_tools(need_maven=True, what=needed_by)
    with locked(home):
        if _is_complete(home, marker, payload):
            log.info("another process fetched %s meanwhile", home)
        else:
            download(home)
            (home / ".complete").write_text(json.dumps(marker), encoding="utf-8")
    return java


def fetch_jars(cache_dir: str | os.PathLike[str] | None = None) -> KafkaRuntime:
    """Make sure the Kafka jars are in the cache (idempotent) and return the runtime."""
    version = kafka_version()
    home = cache_root(cache_dir) / f"kafka-{version}"
    marker = pom_marker(kafka_version=version)
    java = fetch_once(home, marker, "lib", _download, needed_by="the local Kafka broker")
    return KafkaRuntime(home=home, version=version, java=java)


def _download(home: Path) -> None:
    log.info(
        "fetching the Apache Kafka %s runtime from Maven Central into %s "
        "(first run only, typically under a minute)",
        kafka_version(),
        home,
    )
    started = time.monotonic()
    jars = copy_dependencies(
        home, resource_text("pom.xml"), _REQUIRED_JAR_PREFIXES, what="the Kafka runtime"
    )
    # class-data archives record the jars they were made from; the JVM ignores stale ones
    for archive in home.glob("classes-*.jsa"):
        archive.unlink()
    log.info("Kafka runtime ready: %d jars in %.1f s", jars, time.monotonic() - started)


def copy_dependencies(home: Path, pom_text: str, required: Sequence[str], *, what: str) -> int:
    """Let Maven copy the runtime classpath `pom_text` describes into `<home>/lib`; jar count.

    The jars land in lib.partial first and replace lib only once every `required` jar-name prefix
    is there, so an interrupted or incomplete fetch never leaves a half classpath behind.
    """
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_text(pom_text, encoding="utf-8")
    partial = home / "lib.partial"
    shutil.rmtree(partial, ignore_errors=True)
    run_maven(
        [
            "mvn",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ],
        what=what,
    )
    jars = sorted(p.name for p in partial.glob("*.jar"))
    missing = [p for p in required if not any(j.startswith(p) for j in jars)]
    if missing:
        raise LocalBrokerError(f"Maven finished but {partial} lacks {', '.join(missing)}*.jar")
    shutil.rmtree(home / "lib", ignore_errors=True)
    partial.rename(home / "lib")
    return len(jars)


def run_maven(argv: list[str], *, what: str) -> None:
    """Run Maven, logging a heartbeat while it downloads; its output's tail goes into the error."""
    tail: list[str] = []
    downloads = 0
    last_report = time.monotonic()
    deadline = last_report + MAVEN_TIMEOUT_S
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        for line in proc.stdout or ():
            tail = [*tail[-39:], line.rstrip()]
            log.debug("mvn: %s", line.rstrip())
            if "Downloaded from" in line:
                downloads += 1
            now = time.monotonic()
            if now - last_report >= _PROGRESS_EVERY_S:
                log.info("still fetching: %d files downloaded so far", downloads)
                last_report = now
            if now > deadline:
                proc.kill()
                raise LocalBrokerError(f"Maven did not finish within {MAVEN_TIMEOUT_S:.0f} s")
        returncode = proc.wait()
    if returncode != 0:
        raise LocalBrokerError(
            f"Maven failed (exit {returncode}) fetching {what}:\n" + "\n".join(tail)
        )
