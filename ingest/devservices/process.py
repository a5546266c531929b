"""A local service's JVM as an operating-system process: spawn, watch, stop, kill; the loopback
ports it binds.

Processes are handled by pid, not by `subprocess.Popen` or asyncio subprocess transports, because
a service outlives the code that started it: `ingest broker start` exits and leaves it running, a
pytest session starts it from one event loop and tests stop and start it from others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
"""Every local service listens on loopback only."""
_POLL_S = 0.05
_EXEC_WAIT_S = 2.0
_T = TypeVar("_T")


def spawn(argv: Sequence[str], output: Path, *, detach: bool) -> int:
    """Start `argv`, stdin from /dev/null, stdout+stderr appended to `output`; return its pid.

    `detach` puts it in a session of its own so it survives the terminal that started it; otherwise
    it stays in our process group and a Ctrl-C (or a CI runner killing the group) reaches it too.
    """
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=detach,
        )
    finally:
        os.close(fd)
    _wait_for_exec(pid)
    return pid


def _wait_for_exec(pid: int) -> None:
    """Return once /proc shows a command line for `pid` (or it died), within _EXEC_WAIT_S.

    posix_spawn returns as soon as the child starts exec, while the kernel still builds the new
    program's memory: /proc/<pid>/cmdline reads empty for that moment, so `runs()` called right
    after `spawn()` could say False about a process that is starting fine. (Not a comparison with
    argv: a script's command line names its interpreter first.)
    """
    deadline = time.monotonic() + _EXEC_WAIT_S
    while time.monotonic() < deadline:
        if command_line(pid) or _is_zombie(pid) or not _exists(pid):
            return
        time.sleep(0.001)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # the state letter follows the parenthesized command name, which may itself contain spaces
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def exited(pid: int) -> bool:
    """True once `pid` is gone. Reaps it if it is our child; a zombie counts as gone."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (a broker started by an earlier `ingest broker start`)
    else:
        if reaped == pid:
            return True
    return not _exists(pid) or _is_zombie(pid)


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def runs(pid: int, *needles: str) -> bool:
    """Whether `pid` is alive and its command line holds every needle (guards against pid reuse)."""
    if exited(pid):
        return False
    argv = command_line(pid)
    return all(any(needle in arg for arg in argv) for needle in needles)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def wait_exit(pid: int, within_s: float) -> bool:
    """True if `pid` exited within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not exited(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def terminate(pid: int, grace_s: float) -> bool:
    """SIGTERM (Kafka's clean shutdown), SIGKILL after `grace_s` s. True if it stopped cleanly."""
    if exited(pid):
        return True
    _signal(pid, signal.SIGTERM)
    if await wait_exit(pid, grace_s):
        return True
    await kill(pid)
    return False


async def kill(pid: int, within_s: float = 10.0) -> None:
    """SIGKILL and wait until `pid` is gone (a process in uninterruptible I/O takes a moment)."""
    _signal(pid, signal.SIGKILL)
    await wait_exit(pid, within_s)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


class LogWatcher:
    """Reads what a log file gained since the watcher was created (appended across runs)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._offset = path.stat().st_size
        except FileNotFoundError:
            self._offset = 0

    def poll(self) -> str:
        """The text appended since the last poll (whole lines only)."""
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return ""
        # only whole lines, so a needle split across two polls is still found
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        return chunk[:end].decode(errors="replace")


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from synchronous code (a pytest session fixture).

    A thread of its own keeps asyncio.run() from replacing (and then clearing) this thread's
    current event loop, which pytest-asyncio sets up around fixtures and tests. Safe for the
    services here because they hold their JVM by pid, not by an event loop's transport.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local-jvm") as pool:
        return pool.submit(asyncio.run, coro).result()


# -- loopback ports ------------------------------------------------------------------------------


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports the kernel considers free right now on `host`.

    All sockets stay bound until every port is chosen, so the ports differ from each other. Another
    process can still take one before the service binds it; `LocalJvm.start()` retries with new
    ports then.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # the same option the JVM sets, so a port in TIME_WAIT after our own service counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
