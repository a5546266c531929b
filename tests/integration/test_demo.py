"""`ingest demo` run non-interactively, as `make demo` runs it: a full match against the truth,
and no process left behind, after a complete run and after a Ctrl-C in the middle of one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--plain", "--mailboxes", "60", "--duration", "20", "--seed", "3"]
_PROCESS_UP = re.compile(r"process (\S+) up: .* \(pid (\d+)\)$")


def demo_argv(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ingest", "demo", *SMALL, "--work-dir", str(work), *extra]


def reported_pids(output: str) -> dict[str, int]:
    """The children the demo says it started (`process <name> up: … (pid N)`)."""
    found = {}
    for line in output.splitlines():
        match = _PROCESS_UP.search(line)
        if match:
            found[match[1]] = int(match[2])
    return found


def processes_mentioning(needle: str) -> list[str]:
    """Command lines of live processes (not this one) that mention `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if needle in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def assert_nothing_left(work: Path, pids: dict[str, int]) -> None:
    assert set(pids) == {"kafka", "simulator", "projector", "kpis", "worker"}, pids
    assert processes_mentioning(str(work)) == []
    for name, pid in pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline")
        # a reused pid would be another program; ours mentioned the work dir
        assert not cmdline.exists() or str(work) not in cmdline.read_text(errors="replace"), name


class TestDemo:
    """The whole pipeline, end to end, as separate processes."""

    @pytest.mark.timeout(300)
    def test_full_match_and_nothing_left_behind(self, tmp_path: Path) -> None:
        work = tmp_path / "demo"
        result = subprocess.run(
            demo_argv(work), cwd=ROOT, capture_output=True, text=True, timeout=280, check=False
        )
        out = result.stdout
        assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
        assert "Result: FULL MATCH (exit code 0)" in out
        assert "MATCH     read API: 60 mailboxes" in out
        assert "MATCH     state topic: 60 mailboxes" in out
        for fault in ("every CometD connection dropped", "Notifier back", "Jetty restarted"):
            assert fault in out
        # the restart really cost the worker its session, and gap repair followed
        assert "CometD session rebuilt (unknown-client)" in out
        report = out[out.index("Timeline:") :]
        # a 402 does not tell a restart from an expired session: the repair says "session-lost"
        repaired = re.findall(r"gap repair \(session-lost\), (\d+) snapshot records", report)
        assert sum(map(int, repaired)) >= 60, report  # every mailbox, once or more
        assert re.search(r"dead letters\s+[1-9]", out), "the malformed payloads were not seen"
        # the KPI consumer's KPIs equal the simulator's: part of the full match
        kpis = out[out.index("Voicemail KPIs (ingest kpis)") :]
        received = re.search(r"messages received \(NEW_MESSAGE\)\s+(\d+)\s+(\d+)", kpis)
        assert received is not None and int(received[1]) > 100, kpis[:2000]
        assert re.search(r"first seen in a snapshot / a restatement\s+[1-9]", kpis), kpis[:2000]
        unread = re.search(r"unread messages now\s+(\d+)\s+(\d+)", kpis)
        assert unread is not None and unread[1] == unread[2], kpis[:2000]  # the same folder state
        assert "MATCH     KPIs" in kpis, kpis[:3000]
        assert "No process left behind." in out
        assert_nothing_left(work, reported_pids(out))

    @pytest.mark.timeout(300)
    def test_registry_mode(self, tmp_path: Path) -> None:
        """`--schema-registry`: a local registry, the worker and projector configured for it."""
        work = tmp_path / "demo"
        result = subprocess.run(
            demo_argv(work, "--schema-registry"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        out = result.stdout
        assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
        assert "MATCH     state topic: 60 mailboxes" in out
        pids = reported_pids(out)
        registry = pids.pop("registry")
        url = re.search(r"process registry up: (http://\S+/apis/ccompat/v7)", out)
        assert url is not None, out[-4000:]
        for config in ("worker.toml", "projector.toml"):
            text = (work / config).read_text()
            assert f'KAFKA_SCHEMA_REGISTRY_URL = "{url[1]}"' in text, text
        assert "No process left behind." in out
        assert_nothing_left(work, pids)
        assert not Path(f"/proc/{registry}").exists() or "apicurio" not in Path(
            f"/proc/{registry}/cmdline"
        ).read_text(errors="replace")

    @pytest.mark.timeout(300)
    def test_ctrl_c_mid_run_stops_everything(self, tmp_path: Path) -> None:
        work = tmp_path / "demo"
        log = tmp_path / "demo.out"
        with log.open("w") as out:
            demo = subprocess.Popen(
                demo_argv(work), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        try:
            deadline = time.monotonic() + 200
            while "scenario started" not in log.read_text():
                assert demo.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
            demo.send_signal(signal.SIGINT)  # what Ctrl-C sends to the demo's process group
            code = demo.wait(timeout=90)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        text = log.read_text()
        assert code == 130, text[-4000:]
        assert "interrupted: stopping everything" in text
        # the worker drained and the projector committed: both exited by themselves on SIGTERM
        assert re.search(r"worker \(pid \d+\) exit 0", text), text[-2000:]
        assert re.search(r"projector \(pid \d+\) exit 0", text), text[-2000:]
        assert "No process left behind." in text
        assert_nothing_left(work, reported_pids(text))
