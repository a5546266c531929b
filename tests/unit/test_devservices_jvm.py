"""`LocalJvm`'s lifecycle with a Python script in the JVM's place: readiness, ports, failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ingest.devservices import process
from ingest.devservices.jvm import LocalJvm, PortTaken
from ingest.devservices.process import HOST, free_ports
from ingest.errors import DevServiceError

READY = "import sys, time; print('READY', sys.argv[1], flush=True); time.sleep(60)"
TAKEN_ONCE = """
import pathlib, sys, time
seen = pathlib.Path(sys.argv[2])
if seen.exists():
    print('READY', flush=True)
else:
    seen.touch()
    print('bind failed: PORT TAKEN', flush=True)
time.sleep(60)
"""
TAKEN = "import time; print('PORT TAKEN', flush=True); time.sleep(60)"
EXITS = "print('bye')"
SILENT = "import time; time.sleep(60)"


class ScriptService(LocalJvm):
    """A service whose "JVM" is `python -c script <port> <marker file>`."""

    name = "the script"
    port_taken = "PORT TAKEN"

    def __init__(
        self, work_dir: Path, script: str, port: int | None = None, ready_timeout: float = 30.0
    ) -> None:
        super().__init__(
            work_dir,
            temp_prefix="unused-",
            ready_timeout=ready_timeout,
            stop_timeout=5.0,
            detach=False,
            ports_pinned=port is not None,
        )
        self.script = script
        self.launched_on: list[int] = []
        self._port = port if port is not None else free_ports(1)[0]

    @property
    def address(self) -> str:
        return f"{HOST}:{self._port}"

    @property
    def loopback_ports(self) -> tuple[int, ...]:
        return (self._port,)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "out.log"

    @property
    def identity(self) -> tuple[str, ...]:
        return (self.script,)

    @property
    def title(self) -> str:
        return "a script"

    async def _prepare(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        self.launched_on.append(self._port)
        marker = str(self.work_dir / "seen")
        return [sys.executable, "-c", self.script, str(self._port), marker]

    async def _ready(self, output: str) -> bool:
        return "READY" in output

    def _choose_ports(self) -> None:
        self._port = free_ports(1)[0]


class TestLifecycle:
    """Ready when the hook says so; stop idempotent; restart and kill keep the port."""

    async def test_start_stop_restart_kill(self, tmp_path: Path) -> None:
        async with ScriptService(tmp_path, READY) as service:
            first_pid, port = service.pid, service.loopback_ports
            assert service.running
            assert f"READY {port[0]}" in service.log_path.read_text()
            await service.restart()
            assert service.running and service.pid != first_pid
            assert service.loopback_ports == port
            await service.kill()
            assert not service.running
            await service.kill()  # idempotent
            await service.start()
            assert service.loopback_ports == port
        assert not service.running
        await service.stop()  # idempotent

    async def test_detach_forgets_the_pid(self, tmp_path: Path) -> None:
        service = ScriptService(tmp_path, READY)
        await service.start()
        pid = service.detach()
        assert service.pid is None and not service.running
        with pytest.raises(DevServiceError, match="not running"):
            service.detach()
        assert process.runs(pid, READY)  # still running: `ingest broker stop` stops it by pid
        assert await process.terminate(pid, 5.0)


class TestPorts:
    """A port taken between choosing and binding: other ports, unless the caller chose it."""

    async def test_a_chosen_port_taken_meanwhile_is_replaced(self, tmp_path: Path) -> None:
        async with ScriptService(tmp_path, TAKEN_ONCE) as service:
            assert service.running
            first, second = service.launched_on
            assert first != second and service.loopback_ports == (second,)

    async def test_a_pinned_port_is_one_clear_error(self, tmp_path: Path) -> None:
        (port,) = free_ports(1)
        service = ScriptService(tmp_path, TAKEN, port=port)
        with pytest.raises(PortTaken, match=f"port {port} is in use: PORT TAKEN"):
            await service.start()
        assert not service.running and service.launched_on == [port]


class TestFailures:
    """A JVM that exits or never gets ready is an error naming its log; nothing stays running."""

    async def test_exit_while_starting(self, tmp_path: Path) -> None:
        service = ScriptService(tmp_path, EXITS)
        with pytest.raises(DevServiceError, match=r"exited while starting(.|\n)*bye"):
            await service.start()
        assert not service.running

    async def test_not_ready_in_time(self, tmp_path: Path) -> None:
        service = ScriptService(tmp_path, SILENT, ready_timeout=1.0)
        with pytest.raises(DevServiceError, match="not ready after 1 s") as failed:
            await service.start()
        assert not isinstance(failed.value, PortTaken)
        assert not service.running
