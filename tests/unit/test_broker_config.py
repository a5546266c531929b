"""The local broker's configuration, tool checks and process handling, without starting Kafka."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from ingest.devservices import process
from ingest.devservices.background import ServiceState, read_state, write_state
from ingest.devservices.kafka.config import (
    HEAP_OPTIONS,
    JVM_OPTIONS_ENV,
    BrokerPorts,
    Quorum,
    choose_ports,
    java_command,
    random_cluster_id,
    read_ports,
    render_server_properties,
)
from ingest.devservices.kafka.runtime import KafkaRuntime, kafka_version
from ingest.devservices.maven import (
    INSTALL_HINT,
    Java,
    cache_root,
    check_tools,
    parse_java_version,
)
from ingest.devservices.process import free_ports, port_is_free
from ingest.errors import DevServiceError


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class TestServerProperties:
    """server.properties describes one KRaft broker+controller on loopback."""

    def render(self, tmp_path: Path) -> dict[str, str]:
        ports = BrokerPorts(port=40001, controller_port=40002)
        return parse_properties(render_server_properties(ports, tmp_path / "kraft"))

    def test_listeners_and_quorum_use_the_given_ports_on_loopback(self, tmp_path: Path) -> None:
        props = self.render(tmp_path)
        assert props["process.roles"] == "broker,controller"
        assert props["listeners"] == ("PLAINTEXT://127.0.0.1:40001,CONTROLLER://127.0.0.1:40002")
        assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:40001"
        assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:40002"
        assert props["controller.listener.names"] == "CONTROLLER"
        assert props["log.dirs"] == str(tmp_path / "kraft")

    def test_single_node_replication_and_no_auto_creation(self, tmp_path: Path) -> None:
        props = self.render(tmp_path)
        for key in (
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "transaction.state.log.min.isr",
            "share.coordinator.state.topic.replication.factor",
            "min.insync.replicas",
        ):
            assert props[key] == "1", key
        assert props["group.initial.rebalance.delay.ms"] == "0"
        assert props["auto.create.topics.enable"] == "false"

    def test_no_placeholder_is_left(self, tmp_path: Path) -> None:
        text = render_server_properties(BrokerPorts(1, 2), tmp_path)
        assert "${" not in text

    def test_ports_are_read_back_from_a_rendered_file(self, tmp_path: Path) -> None:
        path = tmp_path / "server.properties"
        path.write_text(render_server_properties(BrokerPorts(40011, 40012), tmp_path))
        assert read_ports(path) == BrokerPorts(40011, 40012)
        assert read_ports(tmp_path / "missing.properties") is None


class TestQuorumProperties:
    """A node of a three-node quorum: its own id, every voter, replication 3, min in-sync 2."""

    quorum = Quorum(node_id=2, controller_ports=(41001, 41002, 41003), cluster_id="abc")

    def render(self, tmp_path: Path) -> dict[str, str]:
        ports = BrokerPorts(port=40002, controller_port=41002)
        return parse_properties(render_server_properties(ports, tmp_path, self.quorum))

    def test_node_id_and_voters(self, tmp_path: Path) -> None:
        props = self.render(tmp_path)
        assert props["node.id"] == "2"
        assert props["controller.quorum.voters"] == (
            "1@127.0.0.1:41001,2@127.0.0.1:41002,3@127.0.0.1:41003"
        )
        assert props["listeners"] == "PLAINTEXT://127.0.0.1:40002,CONTROLLER://127.0.0.1:41002"

    def test_replication_three_and_two_in_sync_everywhere(self, tmp_path: Path) -> None:
        props = self.render(tmp_path)
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "share.coordinator.state.topic.replication.factor",
        ):
            assert props[key] == "3", key
        for key in (
            "min.insync.replicas",
            "transaction.state.log.min.isr",
            "share.coordinator.state.topic.min.isr",
        ):
            assert props[key] == "2", key
        assert props["unclean.leader.election.enable"] == "false"
        assert int(props["broker.session.timeout.ms"]) > 2 * int(
            props["broker.heartbeat.interval.ms"]
        )

    def test_a_single_node_gets_none_of_the_quorum_settings(self, tmp_path: Path) -> None:
        props = parse_properties(render_server_properties(BrokerPorts(1, 2), tmp_path))
        assert "broker.session.timeout.ms" not in props

    @pytest.mark.parametrize(("size", "replication", "in_sync"), [(1, 1, 1), (2, 2, 1), (5, 3, 2)])
    def test_replication_follows_the_size(self, size: int, replication: int, in_sync: int) -> None:
        quorum = Quorum(1, tuple(range(41001, 41001 + size)), cluster_id="abc")
        assert (quorum.replication_factor, quorum.min_insync_replicas) == (replication, in_sync)

    def test_a_port_the_quorum_does_not_list_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(DevServiceError, match="quorum expects 41002"):
            render_server_properties(BrokerPorts(40002, 41009), tmp_path, self.quorum)
        with pytest.raises(DevServiceError, match="not one of 3 voters"):
            Quorum(node_id=4, controller_ports=(1, 2, 3), cluster_id="abc")


class TestPorts:
    """Free loopback ports, distinct, and really bindable."""

    def test_free_ports_are_distinct_and_bindable(self) -> None:
        ports = free_ports(3)
        assert len(set(ports)) == 3
        assert all(port_is_free(p) for p in ports)

    def test_a_listening_port_is_not_free(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            assert not port_is_free(sock.getsockname()[1])

    def test_explicit_port_is_kept_and_controller_differs(self) -> None:
        (wanted,) = free_ports(1)
        ports = choose_ports(port=wanted)
        assert ports.port == wanted
        assert ports.controller_port != wanted
        assert ports.bootstrap == f"127.0.0.1:{wanted}"

    def test_equal_explicit_ports_are_refused(self) -> None:
        with pytest.raises(DevServiceError, match="must differ"):
            choose_ports(port=40100, controller_port=40100)


class TestClusterId:
    def test_looks_like_kafka_random_uuid(self) -> None:
        ids = {random_cluster_id() for _ in range(200)}
        assert len(ids) == 200
        for cluster_id in ids:
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
            assert not cluster_id.startswith("-")
            assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


class TestJavaCommand:
    """The JVM command line: heap, classpath wildcard, class-data archive, extra options."""

    runtime = KafkaRuntime(
        home=Path("/cache/kafka-x"),
        version="x",
        java=Java(path=Path("/usr/bin/java"), major=17, version="17.0.1"),
    )

    def command(
        self, class_archive: Path | None = None, archive_at_exit: Path | None = None
    ) -> list[str]:
        return java_command(
            self.runtime,
            "kafka.Kafka",
            ["/data/server.properties"],
            logs_dir=Path("/data/logs"),
            log4j_config=Path("/data/log4j2.properties"),
            class_archive=class_archive,
            archive_at_exit=archive_at_exit,
        )

    def test_layout(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(JVM_OPTIONS_ENV, raising=False)
        argv = self.command()
        assert argv[0] == "/usr/bin/java"
        assert set(HEAP_OPTIONS) <= set(argv)
        assert argv[argv.index("-cp") + 1] == "/cache/kafka-x/lib/*"
        assert argv[-2:] == ["kafka.Kafka", "/data/server.properties"]
        assert "-Dkafka.logs.dir=/data/logs" in argv
        assert "-Dlog4j2.configurationFile=/data/log4j2.properties" in argv
        assert not any(a.startswith("-XX:SharedArchiveFile") for a in argv)

    def test_class_archive_and_extra_options(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(JVM_OPTIONS_ENV, "-XX:TieredStopAtLevel=1 -Dx=y")
        argv = self.command(class_archive=Path("/cache/a.jsa"))
        assert "-XX:SharedArchiveFile=/cache/a.jsa" in argv
        # extra options come after ours (the last one wins in the JVM) and before the main class
        assert argv.index("-Dx=y") > argv.index(HEAP_OPTIONS[-1])
        assert argv.index("-Dx=y") < argv.index("kafka.Kafka")

    def test_training_run_records_an_archive(self) -> None:
        argv = self.command(archive_at_exit=Path("/cache/new.jsa"))
        assert "-XX:ArchiveClassesAtExit=/cache/new.jsa" in argv


class TestTools:
    """Missing or old Java and missing Maven give one error that says what to install."""

    @pytest.mark.parametrize(
        ("output", "expected"),
        [
            ('openjdk version "17.0.15" 2025-04-15', (17, "17.0.15")),
            ('java version "1.8.0_392"', (8, "1.8.0_392")),
            ('openjdk version "21" 2023-09-19', (21, "21")),
            ("command not found", None),
        ],
    )
    def test_parse_java_version(self, output: str, expected: tuple[int, str] | None) -> None:
        assert parse_java_version(output) == expected

    def test_missing_java_and_maven(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.delenv("JAVA_HOME", raising=False)
        with pytest.raises(DevServiceError) as caught:
            check_tools(need_maven=True)
        message = str(caught.value)
        assert "java not found" in message
        assert "mvn (Apache Maven) not found" in message
        assert INSTALL_HINT in message

    def test_old_java_is_refused(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        java = tmp_path / "java"
        java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
        java.chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.delenv("JAVA_HOME", raising=False)
        with pytest.raises(DevServiceError, match=r"Java 11\.0\.2; Java 17 or newer is needed"):
            check_tools(need_maven=False)

    def test_cache_root_follows_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CUMI_CACHE_DIR", "/somewhere/cache")
        assert cache_root() == Path("/somewhere/cache")
        assert cache_root("/explicit") == Path("/explicit")
        monkeypatch.delenv("CUMI_CACHE_DIR")
        assert cache_root() == Path.home() / ".cache" / "cumi-pipeline"

    def test_kafka_version_comes_from_the_pom(self) -> None:
        assert re.fullmatch(r"4\.\d+\.\d+", kafka_version())


class TestProcess:
    """Processes are handled by pid: spawn, watch, SIGTERM, SIGKILL."""

    def test_runs_holds_as_soon_as_spawn_returns(self, tmp_path: Path) -> None:
        # the kernel shows an empty command line while exec builds the new program; spawn waits
        # that moment out (under load 14-41 of 300 spawns lost the race before it did)
        for _ in range(100):
            pid = process.spawn(["/bin/sleep", "30"], tmp_path / "out", detach=False)
            try:
                assert process.runs(pid, "sleep", "30")
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

    def test_runs_holds_for_a_script_as_soon_as_spawn_returns(self, tmp_path: Path) -> None:
        script = tmp_path / "wait.sh"
        script.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
        script.chmod(0o755)
        pid = process.spawn([str(script)], tmp_path / "out", detach=False)
        try:  # the interpreter (running the script) or sleep: either way, one of the two needles
            assert process.runs(pid, "wait.sh") or process.runs(pid, "sleep", "30")
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def test_spawn_returns_for_a_program_that_exits_at_once(self, tmp_path: Path) -> None:
        pid = process.spawn(["/bin/sh", "-c", "exit 3"], tmp_path / "out", detach=False)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3

    async def test_terminate_stops_a_process_with_sigterm(self, tmp_path: Path) -> None:
        pid = process.spawn(["/bin/sleep", "30"], tmp_path / "out", detach=False)
        assert process.runs(pid, "sleep", "30")
        assert await process.terminate(pid, 5.0)
        assert process.exited(pid)
        assert not process.runs(pid, "sleep")

    async def test_sigkill_after_the_grace_period(self, tmp_path: Path) -> None:
        # an ignored signal stays ignored across exec: this sleep cannot be stopped by SIGTERM
        script = "trap '' TERM; exec /bin/sleep 30"
        pid = process.spawn(["/bin/sh", "-c", script], tmp_path / "out", detach=False)
        await self.wait_until_ignoring_term(pid)
        assert not await process.terminate(pid, 0.3)
        assert process.exited(pid)

    @staticmethod
    def ignores_term(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"SigIgn:\s*([0-9a-f]+)", status)
        ignored = int(match.group(1), 16) if match else 0
        return bool(ignored & (1 << (signal.SIGTERM - 1)))

    async def wait_until_ignoring_term(self, pid: int) -> None:
        # the shell needs a moment to install the trap and exec
        for _ in range(100):
            if self.ignores_term(pid) and "sleep" in process.command_line(pid)[0]:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the child never got to ignore SIGTERM")

    async def test_output_goes_to_the_file(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.write_text("earlier run\n")
        pid = process.spawn([sys.executable, "-c", "print('hello')"], out, detach=False)
        assert await process.wait_exit(pid, 30.0)
        assert out.read_text() == "earlier run\nhello\n"

    def test_exited_is_true_for_an_unknown_pid(self) -> None:
        assert process.exited(2**22 + 12345)

    def test_log_watcher_sees_only_whole_new_lines(self, tmp_path: Path) -> None:
        log = tmp_path / "server.log"
        log.write_text("Kafka Server started (last run)\n")
        watcher = process.LogWatcher(log)
        assert watcher.poll() == ""
        with log.open("a") as handle:
            handle.write("line one\nKafka Ser")
        assert watcher.poll() == "line one\n"
        with log.open("a") as handle:
            handle.write("ver started\n")
        assert watcher.poll() == "Kafka Server started\n"

    def test_tail_of_a_missing_file(self, tmp_path: Path) -> None:
        assert process.tail(tmp_path / "nope.log") == "(no nope.log)"


class TestState:
    def test_round_trip_and_garbage(self, tmp_path: Path) -> None:
        state = ServiceState(
            pid=os.getpid(),
            address="127.0.0.1:1234",
            title=f"Kafka 4.1.1, data {tmp_path}",
            log=str(tmp_path / "server.log"),
            identity=["kafka.Kafka", str(tmp_path)],
            started_at="2026-01-01T00:00:00+00:00",
        )
        path = tmp_path / "state" / "state.json"
        write_state(path, state)
        assert read_state(path) == state
        # this pid is alive but is not a Kafka JVM on that data dir
        assert not state.is_alive()
        path.write_text("{not json")
        assert read_state(path) is None
