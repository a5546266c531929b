"""`Simulator`: a Unity Connection stand-in on two real sockets (REST and Jetty/CometD).

    async with Simulator(SimulatorConfig(mailboxes=5, seed=1)) as sim:
        sim.base_url, sim.cometd_url, sim.users["user0001"], sim.delegate
        sim.run_scenario(events=1000, rate=2000)
        await sim.wait_idle()
        assert projection == sim.truth()

Fault methods take effect at once and are plain (not async) calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ingest.errors import ConfigError
from ingest.simulator.admin import add_admin_routes
from ingest.simulator.bayeux import COMETD_PATH, BayeuxConfig, BayeuxServer
from ingest.simulator.bridge import PublishBridge
from ingest.simulator.comet import EventType
from ingest.simulator.faults import Faults, MalformedKind
from ingest.simulator.kpitruth import THRESHOLDS, KpiTruth
from ingest.simulator.mailbox import random_message
from ingest.simulator.notifier import Notifier, Subscriptions
from ingest.simulator.rest import RestApi
from ingest.simulator.scenario import Change, Op, Scenario
from ingest.simulator.stats import Counters, Stats
from ingest.simulator.users import Credentials, UserTable

log = logging.getLogger(__name__)

SCENARIO_CHUNK = 500
"""Events generated between two yields to the event loop when running flat out."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything that shapes a simulator run; the defaults suit a local demo."""

    mailboxes: int = 10
    seed: int = 0
    host: str = "127.0.0.1"
    rest_port: int = 0
    """REST port; 0 picks a free one."""
    cometd_port: int = 0
    """Jetty/CometD port (7080 on a real server); 0 picks a free one."""
    server_zone: str = "America/Los_Angeles"
    """Zone of ReceiveTime strings (EventTime is always UTC)."""
    initial_messages: int = 0
    """Messages each mailbox holds before the simulator starts (never notified)."""
    multi_message_ratio: float = 0.1
    """Share of random operations that act on several messages at once."""
    connect_timeout: float = 20.0
    """Long-poll hold (`advice.timeout`), as CometD 9."""
    max_interval: float = 10.0
    session_queue_limit: int = 100_000
    max_batch: int = 1_000
    browser_cookie: bool = True
    """Long-polling sessions bound to the `BAYEUX_BROWSER` cookie (see BayeuxConfig)."""
    ws_max_message: int = 65_536
    """Largest WebSocket message accepted; beyond it the socket is closed with 1009."""
    ws_frame_messages: int = 1
    """Messages per WebSocket frame; 0: a whole reply in one frame."""
    refuse_unknown_channels: bool = False
    """Refuse (403) a subscribe to a channel of no live notification subscription (a server with a
    security policy); by default any subscribe succeeds, as on a stock CometD server."""
    rest_concurrency: int = 5
    rest_queue_limit: int = 50
    retry_after: int | None = None
    """`Retry-After` seconds on throttling 503s (None: no header)."""
    delegate_notifications: bool = True
    """Whether the delegate may call requestnotification with `userobjectid` (undocumented)."""
    admin: bool = False
    """Serve the `/_sim/…` admin endpoints on the REST port."""
    publish_hook: str | None = None
    """Bridge mode: publish events through this hook of another Bayeux server (the reference
    CometD server's `http://127.0.0.1:<port>/_ref/publish`) instead of the simulator's own
    (see ingest.simulator.bridge). The simulator still serves REST and keeps the truth."""

    def __post_init__(self) -> None:
        positive = {
            "mailboxes": self.mailboxes,
            "connect_timeout": self.connect_timeout,
            "max_interval": self.max_interval,
            "session_queue_limit": self.session_queue_limit,
            "max_batch": self.max_batch,
            "ws_max_message": self.ws_max_message,
            "rest_concurrency": self.rest_concurrency,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"simulator {name} must be positive, not {value}")
        if self.ws_frame_messages < 0:
            raise ConfigError("simulator ws_frame_messages must be >= 0 (0: one frame per reply)")
        if self.rest_queue_limit < 0 or self.initial_messages < 0:
            raise ConfigError("simulator rest_queue_limit and initial_messages must be >= 0")
        if not 0 <= self.multi_message_ratio <= 1:
            raise ConfigError("simulator multi_message_ratio must be between 0 and 1")
        try:
            ZoneInfo(self.server_zone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"simulator server_zone {self.server_zone!r} is not a zone") from e


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Simulator:
    """The REST API, the Bayeux server, the scenario engine, the ground truth and the faults."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        arrival_clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> None:
        """`arrival_clock` (tests): epoch seconds that new messages' arrival (ReceiveTime) is
        taken from instead of the wall clock, e.g. to have messages deposited hours before they
        are notified; EventTimes stay on the wall clock."""
        config = dataclasses.replace(config or SimulatorConfig(), **overrides)
        self.config = config
        self.ssl_context = ssl_context
        """Serve REST and CometD over TLS with this server context (https URLs); None: plain."""
        self.accounts = UserTable.generate(config.mailboxes, config.seed)
        self.counters = Counters()
        self.faults = Faults()
        self.scenario = Scenario(
            list(self.accounts.values()),
            seed=config.seed,
            zone=ZoneInfo(config.server_zone),
            initial_messages=config.initial_messages,
            multi_ratio=config.multi_message_ratio,
            clock=arrival_clock or time.time,
        )
        self.kpi_truth = KpiTruth()
        """Arrival, first read and what subscribers were told, per message (`kpis()`)."""
        self.kpi_truth.existing(self.scenario.mailboxes.values())
        self.subscriptions = Subscriptions()
        self.bayeux = BayeuxServer(
            BayeuxConfig(
                connect_timeout=config.connect_timeout,
                max_interval=config.max_interval,
                queue_limit=config.session_queue_limit,
                max_batch=config.max_batch,
                browser_cookie=config.browser_cookie,
                ws_max_message=config.ws_max_message,
                ws_frame_messages=config.ws_frame_messages,
                refuse_unknown_channels=config.refuse_unknown_channels,
            ),
            self.subscriptions.allows,
            self.counters,
        )
        self.bridge = (
            PublishBridge(config.publish_hook, self.counters) if config.publish_hook else None
        )
        self.notifier = Notifier(
            self.subscriptions,
            self.bridge.deliver if self.bridge is not None else self.bayeux.deliver,
            self.counters,
            self.faults,
            seed=config.seed,
            truth=self.kpi_truth,
            tell_when_written=self.bridge is None,
        )
        if self.bridge is None:
            self.bayeux.on_written = self.notifier.written
        self._runners: list[web.AppRunner] = []
        self._cometd_runner: web.AppRunner | None = None
        self._ports: tuple[int, int] | None = None
        self._scenario_task: asyncio.Task[int] | None = None
        self._ghosts = random.Random(f"ghosts-{config.seed}")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runners:
            return
        rest_app = web.Application()
        RestApi(
            self.accounts,
            self.scenario.mailboxes,
            self.subscriptions,
            self.faults,
            self.counters,
            concurrency=self.config.rest_concurrency,
            queue_limit=self.config.rest_queue_limit,
            retry_after=self.config.retry_after,
            delegate_notifications=self.config.delegate_notifications,
            on_listed=self.kpi_truth.listed,
        ).add_routes(rest_app)
        if self.config.admin:
            add_admin_routes(rest_app, self)
        cometd_app = web.Application()
        self.bayeux.add_routes(cometd_app)
        try:
            rest_port = await self._serve(rest_app, self.config.rest_port)
            cometd_port = await self._serve(cometd_app, self.config.cometd_port)
            self._cometd_runner = self._runners[-1]
            await self.bayeux.start()
            if self.bridge is not None:
                await self.bridge.start()
        except BaseException:
            await self.stop()
            raise
        self._ports = (rest_port, cometd_port)
        log.info("simulator up: REST %s, CometD %s", self.base_url, self.cometd_url)

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        sock = _listen(self.config.host, port)
        await web.SockSite(runner, sock, ssl_context=self.ssl_context).start()
        bound: int = sock.getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Stop the scenario, release held connects, close every socket. Idempotent."""
        await self.stop_scenario()
        if self.bridge is not None:
            await self.bridge.stop()
        await self.bayeux.stop()
        for runner in self._runners:
            _close_connections(runner)
        runners, self._runners = self._runners, []
        self._cometd_runner = None
        for runner in runners:
            await runner.cleanup()
        self._ports = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- where and who --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """REST root, e.g. http://127.0.0.1:<port> (paths start with /vmrest)."""
        return f"{self._scheme}://{self.config.host}:{self._started[0]}"

    @property
    def cometd_url(self) -> str:
        return f"{self._scheme}://{self.config.host}:{self._started[1]}{COMETD_PATH}"

    @property
    def _scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def _started(self) -> tuple[int, int]:
        if self._ports is None:
            raise RuntimeError("the simulator is not started")
        return self._ports

    @property
    def users(self) -> dict[str, str]:
        """alias → password of every mailbox owner (full records: `accounts`)."""
        return {alias: user.password for alias, user in self.accounts.items()}

    @property
    def delegate(self) -> Credentials:
        return self.accounts.delegate

    # -- truth, scenario ------------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """Every mailbox in the `ingest fold` format (see Scenario.truth)."""
        return self.scenario.truth()

    def kpis(
        self, now: float | None = None, thresholds: Sequence[float] = THRESHOLDS
    ) -> dict[str, Any]:
        """The voicemail KPIs as of `now` (epoch seconds; default: the wall clock) from the
        server's side (see ingest.simulator.kpitruth)."""
        return self.kpi_truth.kpis(
            self.scenario.mailboxes, time.time() if now is None else now, thresholds
        )

    @property
    def stats(self) -> Stats:
        return dataclasses.replace(
            self.counters.snapshot(),
            sessions=len(self.bayeux.sessions),
            channel_subscriptions=self.bayeux.channel_subscriptions,
            subscriptions=len(self.subscriptions),
        )

    def emit(self, events: int) -> int:
        """Apply random operations worth exactly `events` Comet events now; returns that count."""
        return sum(len(change.notices) for change in self.emit_changes(events))

    def emit_changes(self, events: int) -> list[Change]:
        """`emit`, returning the changes in publish order (what each mailbox was sent)."""
        changes = []
        done = 0
        while done < events:
            change = self.scenario.step(events - done)
            self.notifier.publish(change)
            changes.append(change)
            done += len(change.notices)
        return changes

    def perform(
        self, alias: str, op: Op, *, message_ids: list[str] | None = None, count: int = 1
    ) -> Change:
        """One chosen operation (see Scenario.perform), applied and published."""
        change = self.scenario.perform(alias, op, message_ids=message_ids, count=count)
        self.notifier.publish(change)
        return change

    def run_scenario(
        self, events: int | None = None, rate: float | None = None, duration: float | None = None
    ) -> None:
        """Start emitting random activity in the background.

        `events` Comet events in total (None: until stopped or `duration` seconds passed) at `rate`
        events/s (None: as fast as possible).
        """
        if self._scenario_task is not None and not self._scenario_task.done():
            raise RuntimeError("a scenario is already running")
        self._scenario_task = asyncio.create_task(
            self._run(events, rate, duration), name="simulator-scenario"
        )

    async def _run(self, events: int | None, rate: float | None, duration: float | None) -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while events is None or sent < events:
            elapsed = loop.time() - start
            if duration is not None and elapsed >= duration:
                break
            allowed = (
                SCENARIO_CHUNK if not rate else min(SCENARIO_CHUNK, int(elapsed * rate) - sent)
            )
            if events is not None:
                allowed = min(allowed, events - sent)
            if allowed > 0:
                sent += self.emit(allowed)
            await asyncio.sleep(0 if allowed > 0 and not rate else 0.005)
        return sent

    async def stop_scenario(self) -> None:
        task, self._scenario_task = self._scenario_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_idle(self) -> None:
        """Wait until the running scenario has finished and every live session's queue has been
        written out to its client. A session whose client went away keeps its queue until it
        expires (`max_interval`), so bound this with `asyncio.timeout` where that can happen."""
        if self._scenario_task is not None:
            await asyncio.shield(self._scenario_task)
        if self.bridge is not None:
            await self.bridge.wait_idle()
        # queues shrink in many places (responses, expiry, restart): polling is simpler than events
        while self.bayeux.pending:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- faults ---------------------------------------------------------------------------------

    def drop_connections(self) -> None:
        """Close every CometD connection (long-polls, WebSockets, keep-alives); sessions survive.
        REST connections stay: CUMI REST is served by Tomcat, not the Connection Jetty."""
        self.bayeux.drop_connections()
        self._close_cometd_connections()

    def restart(self) -> None:
        """Like a Connection Jetty restart: every session and notification subscription is lost
        (clients get `402::session_unknown`) and every CometD connection closes. The truth and the
        REST API (Tomcat) are unaffected."""
        self.bayeux.reset()
        self.subscriptions.clear()
        self._close_cometd_connections()
        self.counters.restarts += 1

    def disconnect_sessions(self) -> int:
        """Disconnect every CometD session server-side (`ServerSession.disconnect()`): a held
        connect is answered `/meta/disconnect` + a successful connect advising `reconnect: none`;
        the sessions are forgotten. Notification subscriptions stay. Returns how many."""
        return self.bayeux.disconnect_all()

    def notifier_down(self) -> None:
        """Stop publishing; changes still reach the truth (see ingest.simulator.notifier)."""
        self.notifier.down()

    def notifier_up(self) -> int:
        """Resume publishing: one latest-status event per changed message; returns events sent."""
        return self.notifier.up()

    def duplicates(self, ratio: float) -> None:
        """Re-send this share of events verbatim (0 turns it off)."""
        self.faults.duplicate_ratio = ratio

    def malformed(self, ratio: float) -> None:
        """Follow this share of events with a malformed payload on the same channel."""
        self.faults.malformed_ratio = ratio

    def corrupt(self, ratio: float) -> None:
        """Send this share of events broken instead of valid (0 turns it off): malformed ones are
        dead-lettered, irregular ones published without the odd field (ingest.simulator.faults)."""
        self.faults.corrupt_ratio = ratio

    def inject_malformed(self, alias: str, kind: MalformedKind | None = None) -> int:
        """Publish one malformed payload to `alias`'s subscribers now; returns sessions reached."""
        mailbox = self.scenario.mailboxes[alias]
        # modelled on a NEW_MESSAGE for a message that is not (and never will be) in the truth
        ghost = random_message(
            self._ghosts, int(time.time() * 1000), ZoneInfo(self.config.server_zone), []
        )
        return self.notifier.inject_malformed(
            mailbox, EventType.NEW_MESSAGE, mailbox.usn, [ghost], kind
        )

    def slow(self, latency: float) -> None:
        """Delay every REST response by `latency` seconds (0 turns it off)."""
        self.faults.rest_latency = latency

    def storm(self, duration: float) -> None:
        """Answer every REST call 503 for `duration` seconds from now."""
        self.faults.storm_until = asyncio.get_running_loop().time() + duration

    def clear_faults(self) -> None:
        self.faults.clear()

    def _close_cometd_connections(self) -> None:
        if self._cometd_runner is not None:
            _close_connections(self._cometd_runner)


def _close_connections(runner: web.AppRunner) -> None:
    if runner.server is not None:
        for connection in runner.server.connections:
            connection.force_close()
