"""The child processes of `ingest demo`: started the way an operator starts them, never orphaned.

Each child is `python -m ingest <command> …` with its output in a log file of the demo's work
directory. Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the
demo, which then stops them in an order that lets each drain (worker before projector before
Kafka); and on Linux the kernel signals each child when the demo dies without cleaning up
(PR_SET_PDEATHSIG), so even a `kill -9` of the demo leaves no orphan behind: SIGKILL for the
pipeline's services (a projector whose Kafka stops at the same moment may wait for it), SIGTERM
for `ingest broker start --foreground`, which then stops its Kafka JVM itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ingest.devservices import process
from ingest.errors import IngestError

log = logging.getLogger(__name__)

KILL_WAIT_S = 5.0
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class DemoError(IngestError):
    """The demo could not bring the pipeline up (a process failed to start or to become ready)."""


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to send `sig` to the child when the demo dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before the hook ran
            os._exit(1)

    return hook


def child_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The demo's environment without pipeline settings: a KAFKA_BOOTSTRAP_SERVERS exported in the
    user's shell must not point a demo child at another cluster. Settings come from config files."""
    keep = {"CUMI_CACHE_DIR", "CUMI_KAFKA_JVM_OPTS"}
    env = {
        name: value
        for name, value in os.environ.items()
        if name in keep or not name.startswith(("CUMI_", "KAFKA_"))
    }
    env["CUMI_LOG_FORMAT"] = "text"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(path: Path, settings: Mapping[str, str | int | float]) -> Path:
    """A flat TOML settings file, as `--config` takes it (JSON string syntax is valid TOML)."""
    lines = [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Child:
    """One `python -m ingest …` process and its log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        stop_timeout: float,
        env: Mapping[str, str] | None = None,
        death_signal: signal.Signals = signal.SIGKILL,
    ) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "ingest", *args]
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.death_signal = death_signal
        """What the kernel sends it if the demo dies first."""
        self._env = child_environment(env)
        self._process: asyncio.subprocess.Process | None = None
        self.outcome: str | None = None
        """How it ended, once stopped: `exit 0`, `killed after 15 s`, …"""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=_parent_death_signal(
                    self.death_signal
                ),  # only prctl and getppid run there
            )
        log.debug("%s started, pid %s: %s", self.name, self.pid, " ".join(self.argv))

    async def wait_for_line(self, pattern: str, within: float) -> re.Match[str]:
        """The first line of the log matching `pattern` (a regex, whole line); DemoError when the
        process exits or `within` seconds pass first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            for line in self.log_text().splitlines():
                found = regex.fullmatch(line.strip())
                if found:
                    return found
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name} not ready after {within:.0f} s\n{self.tail()}")
            await asyncio.sleep(_POLL_S)

    async def wait(self, within: float) -> int:
        """Its exit code once it exits by itself; DemoError (it keeps running) after `within` s."""
        assert self._process is not None
        try:
            return await asyncio.wait_for(self._process.wait(), within)
        except TimeoutError as e:
            raise DemoError(f"{self.name} still running after {within:.0f} s") from e

    def check_alive(self) -> None:
        if self._process is not None and self._process.returncode is not None:
            raise DemoError(
                f"{self.name} exited with code {self._process.returncode}\n{self.tail()}"
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{text}"

    async def stop(self) -> str:
        """SIGTERM, wait `stop_timeout` s, then SIGKILL. Idempotent; returns how it ended."""
        proc = self._process
        if proc is None:
            return "not started"
        if self.outcome is not None:
            return self.outcome
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
                self.outcome = f"killed after {self.stop_timeout:.0f} s"
                return self.outcome
            self.outcome = _describe(proc.returncode)
        else:
            self.outcome = f"had exited ({_describe(proc.returncode)})"
        return self.outcome


def _describe(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        # it had not installed its SIGTERM handler yet (still starting): the default action ran
        return f"ended by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


async def stop_jvm(pid: int | None, data_dir: Path, grace_s: float) -> str | None:
    """The Kafka JVM outlives its `ingest broker start --foreground` parent only if that parent
    was killed before it could stop it: then stop it here (checked by pid and data dir)."""
    if pid is None or not process.runs(pid, "kafka.Kafka", str(data_dir)):
        return None
    clean = await process.terminate(pid, grace_s)
    return "stopped" if clean else "killed"


def _ancestors() -> set[int]:
    """This process and its ancestors: their command lines may mention the work dir too."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])  # the field after the state letter
    return found


def leftover_pids(needle: str) -> list[int]:
    """Pids of live processes, other than the demo and its ancestors, whose command line mentions
    `needle` (the demo's work dir: every child's configuration, data or log path is in it)."""
    skip = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if (
            entry.name.isdigit()
            and int(entry.name) not in skip
            and process.runs(int(entry.name), needle)
        ):
            found.append(int(entry.name))
    return found
