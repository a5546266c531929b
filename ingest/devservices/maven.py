"""Fetching a local service's Java side once: Java and Maven on the machine, artifacts in a cache.

None of the local services is on PyPI. Each ships a pom.xml as package data (the one place its
versions are written) and lets Maven copy its runtime classpath (`copy_dependencies`) or unpack its
distribution (`unpack`) from Maven Central into `<cache>/<name>-<version>/`. `fetch_once` makes
that idempotent and safe between processes: a file lock, and a `.complete` marker written last
that records the pom's hash (a changed pom fetches again).
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
from pathlib import Path

from ingest.errors import DevServiceError

log = logging.getLogger(__name__)

MIN_JAVA = 17
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven"
MAVEN_TIMEOUT_S = 900.0
_PROGRESS_EVERY_S = 5.0
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = ".complete"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else `$CUMI_CACHE_DIR`, else `~/.cache/cumi-pipeline` (outside the checkout)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("CUMI_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cumi-pipeline"


# -- package data --------------------------------------------------------------------------------


def resource_bytes(package: str, name: str) -> bytes:
    """A file shipped in `package` (pom.xml, properties templates, Java sources)."""
    return importlib.resources.files(package).joinpath(name).read_bytes()


def resource_text(package: str, name: str) -> str:
    return resource_bytes(package, name).decode("utf-8")


def pom_property(package: str, name: str) -> str:
    """A plain `<properties>` value of `package`'s pom.xml: the one place a version is written."""
    root = ET.fromstring(resource_bytes(package, "pom.xml"))
    value = root.findtext(f"m:properties/m:{name}", namespaces=_POM_NS)
    if not value:
        where = package.replace(".", "/")
        raise DevServiceError(f"{where}/pom.xml has no <{name}> property")
    return value.strip()


# -- Java and Maven on this machine --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Java:
    """The `java` launcher a local service runs with."""

    path: Path
    major: int
    version: str
    """The quoted version string of `java -version`, e.g. 17.0.15."""


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


def check_tools(*, need_maven: bool, what: str = "a local development service") -> Java:
    """The Java to run `what` with; one DevServiceError naming everything missing otherwise."""
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
        raise DevServiceError(
            f"{what} needs Java >= {MIN_JAVA} and Maven: "
            + "; ".join(problems)
            + f". Install them, e.g. `{INSTALL_HINT}`."
        )
    return java


# -- fetching once -------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """Serialize work on `home`: two test sessions starting at once must not both run Maven."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with home.with_name(home.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(home: Path) -> dict[str, str]:
    try:
        marker = json.loads((home / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def fetch_once(
    home: Path,
    package: str,
    *,
    what: str,
    fetch: Callable[[Path], None],
    build: Callable[[Path, Java], None] | None = None,
    payload: str = "lib",
    marker: Mapping[str, str] | None = None,
) -> Java:
    """Make `home` complete (idempotent); return the Java to run what it holds.

    Complete means `home/payload` exists and the `.complete` file (written last) equals `marker`
    plus the hash of `package`'s pom.xml: its bytes, so even a changed comment fetches again, in
    every checkout sharing the cache. Otherwise `fetch(home)` runs Maven, unless the pom is
    unchanged and the payload there (only `build` changed), then `build(home, java)` if given.
    Needs Maven only when fetching, always Java >= 17.
    """
    pom = resource_bytes(package, "pom.xml")
    wanted = {**(marker or {}), "pom_sha256": hashlib.sha256(pom).hexdigest()}
    if _read_marker(home) == wanted and (home / payload).exists():
        return check_tools(need_maven=False, what=what)
    with locked(home):
        done = _read_marker(home)
        have_payload = (home / payload).exists()
        if done == wanted and have_payload:
            log.info("another process fetched %s meanwhile", what)
            return check_tools(need_maven=False, what=what)
        fetched = have_payload and done.get("pom_sha256") == wanted["pom_sha256"]
        java = check_tools(need_maven=not fetched, what=what)
        (home / _MARKER).unlink(missing_ok=True)
        if not fetched:
            fetch(home)
        if build is not None:
            build(home, java)
        # written last: its presence means the folder is complete
        (home / _MARKER).write_text(json.dumps(wanted), encoding="utf-8")
    return java


def copy_dependencies(home: Path, package: str, required: Sequence[str], *, what: str) -> int:
    """Let Maven copy the runtime classpath `package`'s pom describes into `<home>/lib`; jar count.

    The jars land in lib.partial first and replace lib only once every `required` jar-name prefix
    is there, so an interrupted or incomplete fetch never leaves a half classpath behind.
    """
    goal = ("dependency:copy-dependencies", "-DincludeScope=runtime")
    partial = _maven_into(home, package, "lib", goal, what=what)
    jars = sorted(p.name for p in partial.glob("*.jar"))
    missing = [p for p in required if not any(j.startswith(p) for j in jars)]
    if missing:
        raise DevServiceError(f"Maven finished but {partial} lacks {', '.join(missing)}*.jar")
    _replace(home / "lib", partial)
    return len(jars)


def unpack(home: Path, package: str, required: Sequence[str], *, what: str) -> Path:
    """Let Maven unpack the artifact items of `package`'s pom into `<home>/dist`; returns it.

    Like `copy_dependencies`, through dist.partial: `required` (paths inside) must all be there.
    """
    # the unpack goal skips artifacts its markers (under target/) say it unpacked before
    shutil.rmtree(home / "target", ignore_errors=True)
    partial = _maven_into(home, package, "dist", ("dependency:unpack",), what=what)
    missing = [name for name in required if not (partial / name).exists()]
    if missing:
        raise DevServiceError(f"Maven finished but {partial} lacks {', '.join(missing)}")
    _replace(home / "dist", partial)
    shutil.rmtree(home / "target", ignore_errors=True)
    return home / "dist"


def _maven_into(home: Path, package: str, folder: str, goal: Sequence[str], *, what: str) -> Path:
    """Run a maven-dependency-plugin goal on `package`'s pom into `<home>/<folder>.partial`."""
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_bytes(resource_bytes(package, "pom.xml"))
    partial = home / f"{folder}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    run_maven(["mvn", "-B", "-f", str(pom), *goal, f"-DoutputDirectory={partial}"], what=what)
    return partial


def _replace(final: Path, partial: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)


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
                raise DevServiceError(f"Maven did not finish within {MAVEN_TIMEOUT_S:.0f} s")
        returncode = proc.wait()
    if returncode != 0:
        raise DevServiceError(
            f"Maven failed (exit {returncode}) fetching {what}:\n" + "\n".join(tail)
        )
