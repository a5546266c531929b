"""`ingest demo`: the whole pipeline end to end on one machine, checked against the ground truth.

    ingest demo [--mailboxes 300] [--events N] [--duration 60] [--seed 7] [--plain] [--keep-running]
                [--schema-registry]

Starts, as separate processes talking over sockets on 127.0.0.1, exactly what an operator runs:
a Kafka broker of its own (`ingest broker start --foreground`, in a temporary data directory), the
CUMI simulator (`ingest simulator --admin`), the projector and an ingest worker (`ingest projector`,
`ingest worker`, each with a config file). Once every mailbox is subscribed it plays a scenario of
random mailbox activity with duplicates, malformed payloads and events sent broken instead of
valid (repaired after their dead letter, or published without the odd field), and along the way a
CometD connection drop, a Notifier downtime and a Connection Jetty restart (all sessions and
subscriptions lost). Then it waits for the pipeline to drain, compares the projection — from the
projector's read API and from the compacted state topic — and the voicemail KPIs of `ingest kpis`
with the simulator's ground truth, prints a per-mailbox summary and where to look next, and stops
every process (SIGTERM, then SIGKILL after a bound), also after Ctrl-C or an error. Exit code: 0
full match, 1 mismatch, 2 the pipeline could not be brought up, 130 interrupted.

`--schema-registry` runs it all in registry mode: a local schema registry (Apicurio, the
Confluent-compatible API) starts next to Kafka, the worker's and the projector's config files carry
KAFKA_SCHEMA_REGISTRY_URL, and every record is written in the Confluent wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ingest.demo.probe import Probe, state_topic_state
from ingest.demo.processes import (
    Child,
    DemoError,
    free_port,
    leftover_pids,
    stop_jvm,
    write_config,
)
from ingest.demo.report import Endpoints, KpiCheck, Report, Verdict, compare
from ingest.demo.view import Sample, View, make_view
from ingest.devservices.registry import LocalRegistry
from ingest.errors import IngestError
from ingest.eventlog.schema_registry import RegistrySchemaIds, schema_ids
from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.settings import SchemaRegistrySettings

log = logging.getLogger(__name__)

EXIT_SETUP_FAILED, EXIT_INTERRUPTED = 2, 130
SAMPLE_EVERY_S = 1.0
FETCH_TIMEOUT_S = 900.0
"""First run: Maven downloads the Kafka jars and a class-data archive is trained."""
BROKER_READY_S = 150.0
PIPELINE_READY_S = 180.0
DRAIN_TIMEOUT_S = 90.0
VERIFY_TIMEOUT_S = 30.0
KPI_TIMEOUT_S = 20.0
DUPLICATES, MALFORMED, CORRUPT = 0.02, 0.003, 0.003
"""Share of events the simulator re-sends verbatim, that it follows with a junk payload, and that
it sends broken instead of valid (half of those dead letters: only the gap repair they trigger
brings their change, and the final comparison with the truth shows it did)."""

FAULTS: tuple[tuple[float, str, str], ...] = (
    (0.20, "drop_connections", "network blip: every CometD connection dropped"),
    (0.35, "notifier_down", "Notifier service down: events are withheld"),
    (0.50, "notifier_up", "Notifier back: {result} latest-status events sent"),
    (0.65, "restart", "Connection Jetty restarted: every session and subscription lost"),
)
"""(share of the scenario's duration, simulator fault, timeline text). The restart comes after
the Notifier downtime on purpose: while the Notifier is down a mailbox's USN can move on without
any event ever telling, and only the gap repair after a restart brings such a USN back in line."""


@dataclass(frozen=True, slots=True)
class DemoConfig:
    mailboxes: int = 300
    events: int = 9000
    duration: float = 60.0
    seed: int = 7
    plain: bool = False
    keep_running: bool = False
    work_dir: Path | None = None
    top: int = 10
    initial_messages: int = 3
    schema_registry: bool = False
    """Registry mode: a local schema registry, and the Confluent wire format on every topic."""

    @property
    def rate(self) -> float:
        return self.events / self.duration


class Demo:
    """One run: bring the pipeline up, play the scenario, verify, report, stop everything."""

    def __init__(self, config: DemoConfig, view: View, interrupted: asyncio.Event) -> None:
        self.config = config
        self.view = view
        self.interrupted = interrupted
        self.owns_work_dir = config.work_dir is None
        self.work = (config.work_dir or Path(tempfile.mkdtemp(prefix="cumi-demo-"))).absolute()
        self.children: dict[str, Child] = {}
        self.jvm_pid: int | None = None
        self.registry: LocalRegistry | None = None
        self.service_pids: dict[str, int | None] = {}
        """Stopped services that are not children (the JVMs), by name."""
        self.bootstrap = self.sim_url = ""
        self.worker_url = self.projector_url = self.kpis_url = ""
        self.http: aiohttp.ClientSession | None = None
        self.probe: Probe | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.stopped: dict[str, str] = {}
        self.holding = False
        """True while `--keep-running` waits for Ctrl-C (which then ends the wait, not the run)."""
        self.stopping = False
        self.restarted_at: str | None = None

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> int:
        code = EXIT_SETUP_FAILED
        try:
            self._prepare_work_dir()
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            await self._start_pipeline()
            await self._play_scenario()
            await self._drain()
            verdict, api_state, truth = await self._verify()
            kpis = await self._kpis()
            verdict = verdict.with_kpis(kpis)
            code = verdict.exit_code
            self._report(verdict, api_state, truth, kpis)
            if self.config.keep_running:
                await self._hold()
        except asyncio.CancelledError:
            if not self.interrupted.is_set():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cleanup below must run with working timeouts
            code = EXIT_INTERRUPTED
            self.view.event("interrupted: stopping everything")
        except (IngestError, aiohttp.ClientError, OSError) as e:
            self.view.event("the pipeline failed; stopping everything")
            self.view.close()
            self.view.console.print(f"[bold red]error:[/] {e}", highlight=False)
        finally:
            self.view.close()
            # logs of a failed or mismatched run are worth reading; an interrupted one's are not
            failed = code not in (0, EXIT_INTERRUPTED)
            await self._shutdown(keep_files=failed or not self.owns_work_dir)
        return code

    def _prepare_work_dir(self) -> None:
        if not self.owns_work_dir and self.work.exists() and any(self.work.iterdir()):
            # a previous run's Kafka data would add its events to this run's projection
            raise DemoError(f"--work-dir {self.work} is not empty")
        self.work.mkdir(parents=True, exist_ok=True)

    async def _start_pipeline(self) -> None:
        c, v = self.config, self.view
        # the simulator needs no Kafka: it starts while the broker does
        users = self.work / "users.json"
        sim = self._child(
            "simulator",
            ["simulator", "--mailboxes", str(c.mailboxes), "--seed", str(c.seed), "--rate", "0",
             "--port", "0", "--cometd-port", "0", "--admin", "--users-file", str(users),
             "--initial-messages", str(c.initial_messages),
             "--duplicates", str(DUPLICATES), "--malformed", str(MALFORMED),
             "--corrupt", str(CORRUPT)],
            stop_timeout=10,
        )  # fmt: skip
        await sim.start()
        v.phase("checking the Kafka runtime (the first run downloads the jars)")
        fetch = self._child("kafka-fetch", ["broker", "fetch"], stop_timeout=10)
        await fetch.start()
        if await fetch.wait(FETCH_TIMEOUT_S) != 0:
            raise DemoError(f"`ingest broker fetch` failed\n{fetch.tail()}")
        v.phase("starting Kafka and the simulator")
        broker = self._child(
            "kafka",
            ["broker", "start", "--foreground", "--data-dir", str(self.work / "kafka"),
             "--state-file", str(self.work / "broker.json"), "--timeout", str(BROKER_READY_S)],
            stop_timeout=45,
            death_signal=signal.SIGTERM,  # it stops the JVM; killed, it would leave the JVM behind
        )  # fmt: skip
        await broker.start()
        if c.schema_registry:
            v.phase("starting the schema registry (the first run downloads it)")
            self.registry = LocalRegistry(work_dir=self.work / "registry")
            await self.registry.start()
            v.process("registry", self.registry.pid, self.registry.url)
        self.sim_url = (await sim.wait_for_line(r"REST\s+(http://\S+)", 60))[1]
        cometd = (await sim.wait_for_line(r"CometD\s+(http://\S+)", 10))[1]
        v.process("simulator", sim.pid, f"{self.sim_url} (CometD {cometd})")
        self.bootstrap = (await broker.wait_for_line(r"127\.0\.0\.1:\d+", BROKER_READY_S + 30))[0]
        self.jvm_pid = self._jvm_pid()
        v.process("kafka", broker.pid, self.bootstrap)
        await ensure_topics(self.bootstrap, default_specs(TopicNames()))
        v.phase("starting the projector and the worker; subscribing every mailbox")
        await self._start_projector()
        await self._start_kpis()
        await self._start_worker(cometd, users)
        assert self.http is not None
        self.probe = Probe(self.http, self.sim_url, self.worker_url, self.projector_url)
        self._monitor = asyncio.create_task(self._sample_forever(), name="demo-monitor")
        await self._until(
            lambda s: s.worker_ready and s.projector_ready and s.subscribed == c.mailboxes,
            PIPELINE_READY_S,
            "the worker and the projector did not become ready",
        )
        v.event(f"pipeline ready: {c.mailboxes} mailboxes subscribed, snapshots taken")

    async def _start_projector(self) -> None:
        port = free_port()
        config = write_config(
            self.work / "projector.toml",
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "CUMI_METRICS_HOST": "127.0.0.1",
                "CUMI_METRICS_PORT": port,
                "CUMI_SHUTDOWN_TIMEOUT_SECONDS": 10,
                **self._registry_settings(),
                # static membership: a restarted projector takes its partitions back at once,
                # instead of waiting out the dead instance's session timeout (30 s) and a
                # rebalance; a shorter timeout would still wait, and expel a projector that a
                # busy machine pauses for a few seconds
                "CUMI_PROJECTOR_GROUP_INSTANCE_ID": "demo-projector-0",
            },
        )
        projector = self._child("projector", ["projector", "--config", str(config)], 20)
        await projector.start()
        self.projector_url = f"http://127.0.0.1:{port}"
        self.view.process("projector", projector.pid, f"{self.projector_url} (read API, /metrics)")

    async def _start_kpis(self) -> None:
        port = free_port()
        config = write_config(
            self.work / "kpis.toml",
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "CUMI_METRICS_HOST": "127.0.0.1",
                "CUMI_METRICS_PORT": port,
                "CUMI_SHUTDOWN_TIMEOUT_SECONDS": 10,
                **self._registry_settings(),
            },
        )
        kpis = self._child("kpis", ["kpis", "--config", str(config)], 20)
        await kpis.start()
        self.kpis_url = f"http://127.0.0.1:{port}"
        self.view.process("kpis", kpis.pid, f"{self.kpis_url}/metrics (KPIs, also /kpis)")

    async def _start_worker(self, cometd: str, users: Path) -> None:
        port = free_port()
        config = write_config(
            self.work / "worker.toml",
            {
                "CUMI_SERVER_URL": self.sim_url,
                "CUMI_COMETD_URL": cometd,
                "CUMI_SERVER_NAME": "simulator",
                "CUMI_SERVER_TIME_ZONE": "America/Los_Angeles",  # the simulator's default zone
                "CUMI_MAILBOXES_FILE": str(users),  # a users file keyed by alias lists them too
                "CUMI_CREDENTIALS_FILE": str(users),
                "CUMI_METRICS_HOST": "127.0.0.1",
                "CUMI_METRICS_PORT": port,
                "CUMI_SHUTDOWN_TIMEOUT_SECONDS": 10,
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                **self._registry_settings(),
            },
        )
        worker = self._child("worker", ["worker", "--config", str(config)], 20)
        await worker.start()
        self.worker_url = f"http://127.0.0.1:{port}"
        self.view.process("worker", worker.pid, f"{self.worker_url}/metrics")

    async def _play_scenario(self) -> None:
        c, v = self.config, self.view
        v.phase(f"scenario: {c.events} events at {c.rate:.0f}/s")
        await self._admin("scenario", {"events": c.events, "rate": c.rate})
        v.event(
            f"scenario started: {c.events} events at {c.rate:.0f}/s, "
            f"{DUPLICATES:.0%} duplicates, {MALFORMED:.1%} malformed payloads, "
            f"{CORRUPT:.1%} events sent broken instead"
        )
        started = time.monotonic()
        for share, fault, text in FAULTS:
            await self._sleep_until(started + share * c.duration)
            if fault == "restart":
                self.restarted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            result = await self._admin(f"fault/{fault}", {})
            v.event(text.format(result=result.get("result")))
        await self._until(
            lambda s: s.generated >= c.events,
            c.duration * 2 + 60,
            "the simulator did not finish its scenario",
        )
        v.event(f"scenario done: {c.events} events generated")

    async def _drain(self) -> None:
        self.view.phase("draining: worker idle, projector lag 0")
        steady: list[Sample] = []

        def quiet(sample: Sample) -> bool:
            # drained, and nothing new arrived over the last two samples
            steady.append(sample)
            del steady[:-3]
            return len(steady) == 3 and all(
                s.drained(self.config.mailboxes)
                and (s.received, s.published, s.applied)
                == (steady[0].received, steady[0].published, steady[0].applied)
                for s in steady
            )

        def blockers(sample: Sample) -> str:
            return "; ".join(sample.blockers(self.config.mailboxes) or ["counters still moving"])

        await self._until(quiet, DRAIN_TIMEOUT_S, "the pipeline did not drain", blockers)
        self.view.event("drained: worker idle, projector lag 0")

    async def _verify(self) -> tuple[Verdict, dict[str, Any], dict[str, Any]]:
        """Compare until a full match or VERIFY_TIMEOUT_S: the last commits may still land."""
        self.view.phase("comparing the projection with the simulator's ground truth")
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        assert self.probe is not None
        while True:
            truth = await self.probe.truth()
            api_state = await self.probe.read_api_state(set(truth))
            topic_state = await state_topic_state(
                self.bootstrap, TopicNames().state, self._schema_ids()
            )
            verdict = compare(truth, {"read API": api_state, "state topic": topic_state})
            if verdict.ok or time.monotonic() > deadline:
                return verdict, api_state, truth
            await asyncio.sleep(1.0)

    async def _kpis(self) -> KpiCheck:
        """The KPI consumer's KPIs and the simulator's at one evaluation time, once they agree or
        after KPI_TIMEOUT_S (the consumer may still be folding the last records). Part of the
        verdict: the simulator computes them from what it told (docs/voicemail-kpis.md)."""
        self.view.phase("comparing the voicemail KPIs with the simulator's")
        assert self.probe is not None
        deadline = time.monotonic() + KPI_TIMEOUT_S
        while True:
            now = time.time()
            check = KpiCheck(
                await self.probe.kpis(self.kpis_url, now),
                await self.probe.kpi_truth(now),
            )
            if check.ok or time.monotonic() > deadline:
                return check
            await asyncio.sleep(1.0)

    def _report(
        self,
        verdict: Verdict,
        api_state: dict[str, Any],
        truth: dict[str, Any],
        kpis: KpiCheck,
    ) -> None:
        if self._monitor is not None:
            self._monitor.cancel()  # the report shows the last sample; none needed after it
        self.view.close()
        keep = verdict.exit_code != 0 or not self.owns_work_dir or self.config.keep_running
        endpoints = Endpoints(
            bootstrap=self.bootstrap,
            read_api=self.projector_url,
            worker_metrics=f"{self.worker_url}/metrics",
            projector_metrics=f"{self.projector_url}/metrics",
            kpis=self.kpis_url,
            simulator=self.sim_url,
            logs=str(self.work) if keep else None,
            restarted_at=self.restarted_at,
        )
        report = Report(verdict, api_state, truth, self.view.sample, endpoints, kpis)
        report.render(self.view, top=self.config.top, running=self.config.keep_running)

    async def _hold(self) -> None:
        self.view.console.print("\nEverything keeps running. Press Ctrl-C to stop it all.")
        self.holding = True
        await self.interrupted.wait()

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self, *, keep_files: bool) -> None:
        self.stopping = True
        console = self.view.console
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.http is not None:
            await self.http.close()
        # the worker drains into Kafka, the projector commits, then Kafka itself goes
        for name in ("worker", "kpis", "projector", "simulator", "kafka", "kafka-fetch"):
            child = self.children.get(name)
            if child is not None and child.pid is not None:
                outcome = await child.stop()
                if name != "kafka-fetch" or not outcome.startswith("had exited"):
                    self.stopped[name] = outcome
        if self.registry is not None and self.registry.running:
            self.service_pids["registry"] = self.registry.pid
            await self.registry.stop()
            self.stopped["registry"] = "stopped"
        jvm = await stop_jvm(self.jvm_pid, self.work / "kafka", 30.0)
        if jvm is not None:
            self.service_pids["kafka JVM"] = self.jvm_pid
            self.stopped["kafka JVM"] = jvm
        left = leftover_pids(str(self.work))
        if self.stopped:
            pids = {name: child.pid for name, child in self.children.items()} | self.service_pids
            summary = ", ".join(
                f"{name} (pid {pids.get(name)}) {how}" for name, how in self.stopped.items()
            )
            console.print(f"Stopped: {summary}.", highlight=False)
            console.print(
                f"[red]Still running: pids {left}[/]" if left else "No process left behind."
            )
        if keep_files:
            console.print(f"Logs and data kept in {self.work}", highlight=False)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def _registry_settings(self) -> dict[str, str]:
        return {"KAFKA_SCHEMA_REGISTRY_URL": self.registry.url} if self.registry else {}

    def _schema_ids(self) -> RegistrySchemaIds | None:
        return schema_ids(SchemaRegistrySettings(self.registry.url) if self.registry else None)

    def _child(
        self,
        name: str,
        args: list[str],
        stop_timeout: float,
        death_signal: signal.Signals = signal.SIGKILL,
    ) -> Child:
        child = Child(
            name,
            args,
            self.work / f"{name}.log",
            stop_timeout=stop_timeout,
            death_signal=death_signal,
        )
        self.children[name] = child
        return child

    def _jvm_pid(self) -> int | None:
        try:
            pid = json.loads((self.work / "broker.json").read_text(encoding="utf-8"))["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return int(pid)

    async def _admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(f"{self.sim_url}/_sim/{path}", json=body) as response:
            if response.status != 200:
                raise DemoError(f"simulator /_sim/{path}: HTTP {response.status}")
            result: dict[str, Any] = await response.json()
            return result

    async def _sample_forever(self) -> None:
        assert self.probe is not None
        while True:
            self.view.update(await self.probe.sample(self.view.now()))
            await asyncio.sleep(SAMPLE_EVERY_S)

    def _check_children(self) -> None:
        for name, child in self.children.items():
            if name != "kafka-fetch":
                child.check_alive()

    async def _sleep_until(self, moment: float) -> None:
        while time.monotonic() < moment:
            self._check_children()
            await asyncio.sleep(min(0.25, max(0.0, moment - time.monotonic())))

    async def _until(
        self,
        done: Callable[[Sample], bool],
        within: float,
        failure: str,
        explain: Callable[[Sample], str] = repr,
    ) -> None:
        """Until `done(latest sample)` holds; DemoError after `within` s (saying what `explain`
        says of the last sample) or as soon as a child dies."""
        deadline = time.monotonic() + within
        seen: Sample | None = None
        while True:
            self._check_children()
            sample = self.view.sample
            if sample is not seen:
                seen = sample
                if done(sample):
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"{failure} within {within:.0f} s: {explain(sample)}")
            await asyncio.sleep(0.1)


# -- the sub-command -------------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    add = parser.add_argument
    add(
        "--mailboxes",
        type=_positive(int),
        default=d.mailboxes,
        metavar="N",
        help="simulated mailboxes (default %(default)s)",
    )
    add(
        "--events",
        type=_positive(int),
        default=None,
        metavar="N",
        help="scenario events (default 30 per mailbox)",
    )
    add(
        "--duration",
        type=_positive(float),
        default=d.duration,
        metavar="S",
        help="seconds the scenario's events are spread over (default %(default)s)",
    )
    add("--seed", type=int, default=d.seed, help="seed of users and activity (default %(default)s)")
    add("--plain", action="store_true", help="plain progress lines (automatic without a terminal)")
    add(
        "--keep-running",
        action="store_true",
        help="after the report, leave everything up until Ctrl-C",
    )
    add(
        "--work-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="an empty or new directory "
        "for logs, configs and Kafka data, kept (default: a temporary one, deleted unless the run "
        "failed)",
    )
    add(
        "--schema-registry",
        action="store_true",
        help="registry mode: start a local schema registry and write the Confluent wire format",
    )
    add(
        "--top",
        type=_positive(int),
        default=d.top,
        metavar="N",
        help="mailboxes listed in the summary (default %(default)s)",
    )


def config_from(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        mailboxes=args.mailboxes,
        events=args.events if args.events is not None else args.mailboxes * 30,
        duration=args.duration,
        seed=args.seed,
        plain=args.plain or not sys.stdout.isatty(),
        keep_running=args.keep_running,
        work_dir=args.work_dir,
        top=args.top,
        schema_registry=args.schema_registry,
    )


async def main(config: DemoConfig) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupted = asyncio.Event()
    title = (
        f"cumi-pipeline demo · {config.mailboxes} mailboxes · {config.events} events over "
        f"~{config.duration:.0f} s · seed {config.seed}"
    )
    view = make_view(title, config.mailboxes, config.events, plain=config.plain)

    def on_signal() -> None:
        if interrupted.is_set():
            view.console.print("stopping, please wait…")
            return
        interrupted.set()
        if task is not None and not (demo.holding or demo.stopping):
            task.cancel()

    demo = Demo(config, view, interrupted)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return await demo.run()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(main(config_from(args)))
