"""A real Prometheus scrapes a running `ingest worker` and `ingest projector` over loopback.

One scenario per module: the simulator (in-process, real sockets) feeds the worker, the worker
produces to the session's real Kafka broker, the projector folds the topic — both are child
processes started with the CLI, as in production. Prometheus (the server binary of Debian's
package, from `make tools`) scrapes both every second with `job="cumi-pipeline"` and loads the
shipped alert rules. Once the scenario (with some malformed payloads) has drained, the tests read
the key series back through Prometheus's HTTP API and check them against each other and against
what the simulator did; the alert rules must evaluate cleanly on these real series (only the
dead-letter rules true), and every dashboard query must run and the exercised panels show data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from fixtures.producing import delete_topics
from fixtures.simulator import FAST
from fixtures.tools import tool
from fixtures.waiting import eventually
from fixtures.worker import worker_env

from ingest.eventlog.topics import TopicNames, default_specs, ensure_topics
from ingest.events import EventType
from ingest.simulator import Simulator
from ingest.simulator.stats import Stats

pytestmark = [
    pytest.mark.integration,
    pytest.mark.tools,
    pytest.mark.asyncio(loop_scope="module"),
]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "cumi-pipeline" / "files" / "alerts.yaml"
DASHBOARD = REPO / "helm" / "cumi-pipeline" / "files" / "dashboard.json"
MAILBOXES = 6
PARTITIONS = 12
EVENTS = 300
RATE = 60.0
"""Events/s: the scenario spans several scrapes, so counters are seen growing, not just born."""
MALFORMED_RATIO = 0.2
SETTLE_SECONDS = 90.0
# The malformed payloads make these true (not yet firing: their `for:` is minutes); every other
# rule must be inactive on this otherwise healthy pipeline. (Every labelled counter exists at 0
# from the first scrape, so increase() sees the first malformed payload too.)
PENDING = {"CumiWorkerDeadLettersRising", "CumiWorkerDeadLetterRatioHigh"}
# Panels with nothing to show after a clean, short run: none (no Kafka send failed, but the
# producer-error kinds are exported at 0 from the start).
QUIET_PANELS: set[str] = set()
SELECT = 'job="cumi-pipeline"'

Vector = list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A child process with its output in a log file; SIGTERM on stop, SIGKILL as a last resort."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - opening a log file is instant
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=REPO, stdout=out, stderr=out
            )

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, within: float = 30.0) -> int | None:
        """SIGTERM and the exit code (None if never started); SIGKILL after `within` seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM for {within} s") from None


def ingest_child(command: str, env: dict[str, str], port: int, log: Path) -> Child:
    """`python -m ingest <command>` with `env` as its only CUMI_/KAFKA_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUMI_", "KAFKA_"))}
    settings = {
        **env,
        "CUMI_METRICS_HOST": "127.0.0.1",
        "CUMI_METRICS_PORT": str(port),
        "CUMI_LOG_FORMAT": "text",
    }
    return Child(command, [sys.executable, "-m", "ingest", command], {**clean, **settings}, log)


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its TSDB in a temp dir, and its HTTP API."""

    def __init__(self, targets: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "cumi-pipeline", "static_configs": [{"targets": targets}]}
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        argv = [
            tool("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.child = Child("prometheus", argv, dict(os.environ), workdir / "prometheus.log")
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.child.start()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

        async def ready() -> str | None:
            self.child.check_running()
            return None if await self.status("/-/ready") == 200 else "prometheus not ready"

        await eventually(ready, within=30, what="prometheus ready", interval=0.2)

    async def stop(self) -> int | None:
        if self.http is not None:
            await self.http.close()
        return await self.child.stop()

    async def status(self, path: str) -> int:
        assert self.http is not None
        try:
            async with self.http.get(self.url + path) as response:
                return response.status
        except aiohttp.ClientError:
            return 0

    async def api(self, path: str, **params: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> Vector:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        result: Vector = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an expression (None while it has no result)."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    async def values(self, expr: str, label: str) -> dict[str, float]:
        """The values of an expression by one of their labels."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in await self.query(expr)}


async def wait_ready(http: aiohttp.ClientSession, child: Child, port: int) -> None:
    async def ready() -> str | None:
        child.check_running()
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz/ready") as response:
                return None if response.status == 200 else f"{child.name} not ready"
        except aiohttp.ClientError:
            return f"{child.name} not listening"

    await eventually(ready, within=90, what="services ready", interval=0.2)


@dataclass(slots=True)
class Run:
    """The scenario's processes, what the simulator did, and the ports of the two targets."""

    prometheus: Prometheus
    worker: Child
    projector: Child
    stats: Stats
    worker_target: str
    projector_target: str


def sum_of(metric: str, matchers: str = "") -> str:
    return f"sum({metric}{{{SELECT}{', ' + matchers if matchers else ''}}})"


async def drained(prometheus: Prometheus, stats: Stats) -> str | None:
    """None once Prometheus shows the scenario fully through the worker and the projector."""
    received = await prometheus.value(sum_of("cumi_worker_events_received_total"))
    published = await prometheus.value(sum_of("cumi_worker_events_published_total"))
    folded = await prometheus.value(sum_of("cumi_projector_events_total"))
    lag = await prometheus.value(sum_of("cumi_projector_consumer_lag"))
    pending = await prometheus.value(sum_of("cumi_worker_reconcile_pending"))
    snapshots = await prometheus.value(sum_of("cumi_worker_snapshots_published_total"))
    folded_snapshots = await prometheus.value(sum_of("cumi_projector_snapshots_total"))
    if (
        received != stats.delivered
        or folded != published
        or lag != 0
        or pending != 0
        or folded_snapshots != snapshots
    ):
        return (
            f"received {received}/{stats.delivered}, folded {folded}/{published}, lag {lag}, "
            f"repairs pending {pending}, snapshots folded {folded_snapshots}/{snapshots}"
        )
    return None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    """Simulator → `ingest worker` → Kafka → `ingest projector`, scraped by Prometheus, after
    EVENTS events (and MALFORMED_RATIO malformed payloads) have drained through."""
    tmp = tmp_path_factory.mktemp("prometheus-scrape")
    topics = TopicNames.with_prefix(f"t-{uuid.uuid4().hex[:12]}-")
    await ensure_topics(kafka_bootstrap, default_specs(topics, events_partitions=PARTITIONS))
    ports = free_port(), free_port()
    targets = [f"127.0.0.1:{port}" for port in ports]
    async with Simulator(FAST, mailboxes=MAILBOXES, seed=11) as sim:
        # repairs after malformed payloads deferred 1 s, not 30: the run drains in seconds
        worker_settings = worker_env(sim, kafka_bootstrap, topics, tmp) | {
            "CUMI_DEAD_LETTER_REPAIR_INTERVAL_SECONDS": "1"
        }
        worker = ingest_child("worker", worker_settings, ports[0], tmp / "worker.log")
        projector_settings = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_EVENTS_TOPIC": topics.events,
            "KAFKA_STATE_TOPIC": topics.state,
            "CUMI_PROJECTOR_GROUP_ID": f"{topics.events}-projector",
            "CUMI_PROJECTOR_COMMIT_INTERVAL_MS": "200",
        }
        projector = ingest_child("projector", projector_settings, ports[1], tmp / "projector.log")
        prometheus = Prometheus(targets, tmp)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                for child, port in ((worker, ports[0]), (projector, ports[1])):
                    await child.start()
                    await wait_ready(http, child, port)
            await prometheus.start()

            async def scraping() -> str | None:  # the first scrapes come up to 5 s after start
                up = await prometheus.values(f"up{{{SELECT}}}", "instance")
                return None if up == dict.fromkeys(targets, 1.0) else f"up {up}"

            await eventually(scraping, within=30, what="both targets scraped", interval=0.2)
            sim.malformed(MALFORMED_RATIO)
            sim.run_scenario(events=EVENTS, rate=RATE)
            async with asyncio.timeout(60):
                await sim.wait_idle()
            stats = sim.stats

            async def through() -> str | None:
                worker.check_running()
                projector.check_running()
                return await drained(prometheus, stats)

            try:
                await eventually(
                    through, within=SETTLE_SECONDS, what="the scenario through", interval=0.5
                )
            except AssertionError as e:
                logs = f"--- worker\n{worker.tail()}\n--- projector\n{projector.tail()}"
                raise AssertionError(f"{e}\n{logs}") from None
            yield Run(prometheus, worker, projector, stats, *targets)
        finally:
            await prometheus.stop()
            await projector.stop()
            await worker.stop()
            await delete_topics(kafka_bootstrap, topics.all())


def dashboard_panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for panel in panels:
            if panel["type"] != "row":
                out.append(panel)
            out.extend(walk(panel.get("panels", [])))
        return out

    panels: list[dict[str, Any]] = walk(json.loads(DASHBOARD.read_text())["panels"])
    return panels


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables as Grafana would fill them here."""
    return (
        expr.replace("$__rate_interval", "10s")
        .replace('"$job"', '"cumi-pipeline"')
        .replace('"$namespace"', '".*"')
        .replace('"$instance"', '".*"')
    )


class TestScrapedSeries:
    """The key series, as Prometheus stored them, agree with each other and with the simulator."""

    async def test_both_targets_are_up(self, run: Run) -> None:
        up = await run.prometheus.values(f"up{{{SELECT}}}", "instance")
        assert up == {run.worker_target: 1.0, run.projector_target: 1.0}

    async def test_worker_event_counts(self, run: Run) -> None:
        p, stats = run.prometheus, run.stats
        received = await p.value(sum_of("cumi_worker_events_received_total"))
        published = await p.values(
            f"sum by (event_type) (cumi_worker_events_published_total{{{SELECT}}})", "event_type"
        )
        dead = await p.values(
            f"sum by (reason) (cumi_worker_events_dead_lettered_total{{{SELECT}}})", "reason"
        )
        assert stats.malformed > 0 and stats.duplicates == 0
        assert received == stats.delivered
        assert sum(published.values()) == stats.emitted_total == EVENTS
        seen = {event_type for event_type, count in published.items() if count}
        assert seen <= set(stats.emitted) and len(seen) > 1
        assert set(published) == {t.value for t in EventType}  # each at 0 from the start
        assert sum(dead.values()) == stats.malformed
        assert received == sum(published.values()) + sum(dead.values())

    async def test_worker_session_and_subscriptions(self, run: Run) -> None:
        p = run.prometheus
        worker_only = f"and on (instance) cumi_worker_queue_capacity{{{SELECT}}} > 0"
        assert await p.value(sum_of("cumi_worker_subscriptions", 'state="active"')) == MAILBOXES
        assert await p.value(sum_of("cumi_worker_ready")) == 1
        handshakes = await p.values(f"cumi_worker_handshakes_total{{{SELECT}}}", "outcome")
        assert handshakes.get("success", 0) >= 1
        age = await p.value(
            f"time() - cumi_worker_last_connect_timestamp_seconds{{{SELECT}}} {worker_only}"
        )
        assert age is not None and 0 <= age < 30

    async def test_subscription_states_add_up_to_the_mailboxes(self, run: Run) -> None:
        """Every state's gauge is current (the one a mailbox leaves included)."""
        assert await run.prometheus.value(sum_of("cumi_worker_subscriptions")) == MAILBOXES

    async def test_rest_and_gap_repair(self, run: Run) -> None:
        p = run.prometheus
        statuses = await p.values(
            "sum by (status) (cumi_worker_rest_requests_total"
            f'{{{SELECT}, endpoint="requestnotification"}})',
            "status",
        )
        assert statuses.get("200", 0) >= MAILBOXES
        repairs = await p.value(
            sum_of("cumi_worker_reconcile_runs_total", 'reason="startup", outcome="success"')
        )
        assert repairs == MAILBOXES
        # every successful repair published one snapshot: the startup ones, and those after a
        # malformed payload naming a mailbox (reason dead-letter)
        succeeded = await p.value(sum_of("cumi_worker_reconcile_runs_total", 'outcome="success"'))
        assert succeeded is not None and succeeded >= MAILBOXES
        assert await p.value(sum_of("cumi_worker_snapshots_published_total")) == succeeded
        assert await p.value(sum_of("cumi_worker_reconcile_pending")) == 0

    async def test_latency_histograms(self, run: Run) -> None:
        p = run.prometheus
        acked = await p.value(sum_of("cumi_worker_ack_latency_seconds_count"))
        records = await p.value(
            f"sum(cumi_worker_events_published_total{{{SELECT}}})"
            f" + sum(cumi_worker_events_dead_lettered_total{{{SELECT}}})"
            f" + sum(cumi_worker_snapshots_published_total{{{SELECT}}})"
        )
        assert acked == records  # every Kafka ack observed once
        for metric, bound in (
            ("cumi_worker_ack_latency_seconds", 10.0),
            ("cumi_worker_event_lag_seconds", 60.0),
        ):
            p99 = await p.value(
                f"histogram_quantile(0.99, sum by (le) ({metric}_bucket{{{SELECT}}}))"
            )
            assert p99 is not None and 0 < p99 <= bound, (metric, p99)

    async def test_projector_folded_everything(self, run: Run) -> None:
        p = run.prometheus
        outcomes = await p.values(
            f"sum by (outcome) (cumi_projector_events_total{{{SELECT}}})", "outcome"
        )
        assert sum(outcomes.values()) == run.stats.emitted_total
        assert outcomes.get("applied", 0) > 0
        snapshots = await p.value(sum_of("cumi_projector_snapshots_total"))
        assert snapshots == await p.value(sum_of("cumi_worker_snapshots_published_total"))
        lag = await p.values(f"cumi_projector_consumer_lag{{{SELECT}}}", "partition")
        assert lag == {str(n): 0.0 for n in range(PARTITIONS)}
        committed = await p.value(
            sum_of("cumi_projector_transactions_total", 'outcome="committed"')
        )
        assert committed is not None and committed > 0
        assert await p.value(sum_of("cumi_projector_mailboxes")) == MAILBOXES
        assert await p.value(sum_of("cumi_projector_partitions_assigned")) == PARTITIONS
        assert await p.value(sum_of("cumi_projector_ready")) == 1


class TestRulesAndDashboard:
    """The shipped alert rules and dashboard queries work on these real series."""

    async def test_rules_evaluate_and_only_the_dead_letter_rules_are_true(self, run: Run) -> None:
        document = yaml.safe_load(RULES.read_text())
        shipped = {r["alert"] for g in document["groups"] for r in g["rules"]}

        async def evaluated() -> str | None:
            groups = (await run.prometheus.api("rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if {rule["name"] for rule in rules} != shipped:
                return f"loaded {sorted(rule['name'] for rule in rules)}"
            unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            active = {r["name"]: r["state"] for r in rules if r["state"] != "inactive"}
            if unhealthy or active != dict.fromkeys(PENDING, "pending"):
                return f"unhealthy {unhealthy}, active {active}"
            return None

        await eventually(evaluated, within=15, what="rules evaluated", interval=0.5)

    async def test_every_dashboard_query_runs_and_exercised_panels_show_data(
        self, run: Run
    ) -> None:
        empty = []
        for panel in dashboard_panels():
            results = [await run.prometheus.query(concrete(t["expr"])) for t in panel["targets"]]
            if not any(results):
                empty.append(panel["title"])
        assert set(empty) == QUIET_PANELS


class TestShutdown:
    """Last: both processes drain and exit 0 on SIGTERM, and Prometheus sees them go."""

    async def test_sigterm_exits_cleanly(self, run: Run) -> None:
        assert await run.projector.stop() == 0, run.projector.tail()
        assert await run.worker.stop() == 0, run.worker.tail()
        everything_down = {run.worker_target: 0.0, run.projector_target: 0.0}

        async def seen_down() -> str | None:
            up = await run.prometheus.values(f"up{{{SELECT}}}", "instance")
            return None if up == everything_down else f"up {up}"

        await eventually(
            seen_down, within=15, what="the target seen down", interval=0.5
        )  # what CumiPipelineTargetDown watches
