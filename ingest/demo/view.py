"""What `ingest demo` shows while it runs: a live rich view on a terminal, plain lines otherwise.

Both views take the same calls: `process()` when a child is up, `phase()` for the step in hand,
`event()` for a timeline entry (faults and how the pipeline reacted), `update()` with each
`Sample` of the processes' metrics. The timeline also notes reactions it sees in the samples:
CometD sessions rebuilt and gap-repair snapshots, by reason.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

RATE_WINDOW_S = 3.0
MERGE_WINDOW_S = 5.0
"""Gap-repair snapshots of one reason within this many seconds are one timeline entry."""
TIMELINE_SHOWN = 12
PLAIN_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The pipeline's counters at one moment (seconds since the demo started)."""

    at: float
    subscribed: int = 0
    """Mailboxes whose subscription is active in the worker."""
    generated: int = 0
    """Scenario events the simulator generated (published or withheld by a down Notifier)."""
    emitted: int = 0
    """Events the simulator published (including the Notifier's latest-status events)."""
    malformed: int = 0
    corrupted: int = 0
    """Events the simulator sent broken instead of valid."""
    corrupted_malformed: int = 0
    """Of those, payloads the worker must dead-letter (then repair the mailbox)."""
    duplicates: int = 0
    """Events the simulator re-sent verbatim."""
    withheld: int = 0
    coalesced: int = 0
    lost: int = 0
    """Events published while no session was subscribed to the mailbox (after the restart)."""
    received: int = 0
    published: int = 0
    dead_letters: int = 0
    snapshots: Mapping[str, int] = field(default_factory=dict)
    session_restarts: Mapping[str, int] = field(default_factory=dict)
    worker_queue: int = 0
    reconcile_pending: int = 0
    worker_ready: bool = False
    applied: int = 0
    """Events and snapshots the projector applied (duplicates and stale ones not included)."""
    ignored: int = 0
    """Duplicates and stale records the projector recognised and left out."""
    lag: int = 0
    projector_ready: bool = False

    def drained(self, mailboxes: int) -> bool:
        """Nothing in flight that the counters can see."""
        return not self.blockers(mailboxes)

    def blockers(self, mailboxes: int) -> list[str]:
        """What keeps the pipeline from being drained, in words (empty: drained)."""
        checks = (
            (self.worker_ready, "the worker is not ready"),
            (self.subscribed == mailboxes, f"{self.subscribed}/{mailboxes} mailboxes subscribed"),
            (self.worker_queue == 0, f"{self.worker_queue} events not yet acknowledged by Kafka"),
            (self.reconcile_pending == 0, f"{self.reconcile_pending} mailboxes await gap repair"),
            (self.projector_ready, "the projector is not ready"),
            (self.lag == 0, f"projector lag {self.lag}"),
        )
        return [text for ok, text in checks if not ok]


@dataclass(slots=True)
class Entry:
    at: float
    text: str
    key: str = ""
    count: int = 0
    updated: float = 0.0


class View:
    """Timeline and rates shared by both views; subclasses draw them."""

    def __init__(self, title: str, mailboxes: int, events: int, console: Console) -> None:
        self.title = title
        self.mailboxes = mailboxes
        self.events = events
        self.console = console
        self.started = time.monotonic()
        self.current_phase = "starting"
        self.processes: dict[str, str] = {}
        self.timeline: list[Entry] = []
        self.sample = Sample(at=0.0)
        self._window: deque[Sample] = deque()

    def now(self) -> float:
        return time.monotonic() - self.started

    def process(self, name: str, pid: int | None, where: str) -> None:
        self.processes[name] = f"{where} (pid {pid})"

    def phase(self, text: str) -> None:
        self.current_phase = text

    def event(self, text: str) -> None:
        self.timeline.append(Entry(self.now(), text))

    def update(self, sample: Sample) -> None:
        self._observe(self.sample, sample)
        self.sample = sample
        self._window.append(sample)
        while len(self._window) > 2 and sample.at - self._window[0].at > RATE_WINDOW_S:
            self._window.popleft()

    def rate(self, name: str) -> float:
        if len(self._window) < 2:
            return 0.0
        first, last = self._window[0], self._window[-1]
        span = last.at - first.at
        return (getattr(last, name) - getattr(first, name)) / span if span > 0 else 0.0

    def _rate(self, name: str) -> str:
        return f"{self.rate(name):.0f}"

    def close(self) -> None:
        """Stop drawing; the final report follows on `console`."""

    def _observe(self, before: Sample, after: Sample) -> None:
        notes = (
            ("restart", before.session_restarts, after.session_restarts,
             "worker: CometD session rebuilt ({reason}), {n} time(s)"),
            ("snapshot", before.snapshots, after.snapshots,
             "worker: gap repair ({reason}), {n} snapshot records"),
        )  # fmt: skip
        for kind, old, new, template in notes:
            for reason, count in new.items():
                added = count - old.get(reason, 0)
                if added > 0:
                    self._merge(f"{kind}:{reason}", added, template, reason)

    def _merge(self, key: str, added: int, template: str, reason: str) -> None:
        now = self.now()
        for entry in reversed(self.timeline):
            if entry.key == key and now - entry.updated <= MERGE_WINDOW_S:
                entry.count += added
                entry.updated = now
                entry.text = template.format(reason=reason, n=entry.count)
                return
        text = template.format(reason=reason, n=added)
        self.timeline.append(Entry(now, text, key, added, now))


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


class LiveView(View):
    """A rich Live display, redrawn four times a second."""

    def __init__(self, title: str, mailboxes: int, events: int, console: Console) -> None:
        super().__init__(title, mailboxes, events, console)
        self._live = Live(
            get_renderable=self._render,
            console=console,
            refresh_per_second=4,
            transient=False,
            redirect_stderr=True,
        )
        self._live.start()

    def close(self) -> None:
        self._live.stop()

    def _render(self) -> RenderableType:
        s = self.sample
        header = Text.assemble(
            (self.title, "bold"), "   ", (clock(self.now()), "cyan"), "   ", self.current_phase
        )
        procs = Table.grid(padding=(0, 2))
        for name, where in self.processes.items():
            procs.add_row(Text(name, "bold"), where)
        bars = Table.grid(padding=(0, 2))
        bars.add_row(
            "subscriptions",
            ProgressBar(total=self.mailboxes, completed=s.subscribed, width=40),
            f"{s.subscribed}/{self.mailboxes} active",
        )
        bars.add_row(
            "scenario",
            ProgressBar(total=self.events, completed=min(s.generated, self.events), width=40),
            f"{s.generated}/{self.events} events",
        )
        flow = Table(box=box.SIMPLE, pad_edge=False, expand=False)
        flow.add_column("")
        flow.add_column("events/s", justify="right")
        flow.add_column("total", justify="right")
        flow.add_column("")
        snapshots = ", ".join(f"{n} {r}" for r, n in sorted(s.snapshots.items()))
        lag = Text(str(s.lag), "green" if not s.lag else "yellow")
        rows: tuple[tuple[str, str, str | Text, str], ...] = (
            ("in: simulator published", self._rate("emitted"), str(s.emitted),
             f"{s.withheld} withheld by the Notifier, {s.lost} lost unsubscribed"),
            ("out: worker → Kafka", self._rate("published"), str(s.published),
             f"{s.received} received"),
            ("dead letters", "", str(s.dead_letters),
             f"simulator sent {s.malformed} malformed, {s.corrupted_malformed} instead of events"),
            ("gap-repair snapshots", "", str(sum(s.snapshots.values())), snapshots),
            ("projector applied", self._rate("applied"), str(s.applied),
             f"{s.ignored} duplicates/stale ignored"),
            ("projector lag (records)", "", lag, ""),
        )  # fmt: skip
        for row in rows:
            flow.add_row(*row)
        timeline = Table.grid(padding=(0, 2))
        for entry in self.timeline[-TIMELINE_SHOWN:]:
            timeline.add_row(Text(clock(entry.at), "cyan"), entry.text)
        return Group(header, procs, Text(), bars, flow, Text("timeline", "bold"), timeline)


class PlainView(View):
    """One progress line every few seconds, timeline entries as they happen: logs and CI."""

    def __init__(
        self, title: str, mailboxes: int, events: int, console: Console, out: TextIO
    ) -> None:
        super().__init__(title, mailboxes, events, console)
        self._out = out
        self._last_line = -PLAIN_EVERY_S
        self._printed = 0
        self._print(title)

    def _print(self, text: str) -> None:
        print(f"[{clock(self.now())}] {text}", file=self._out, flush=True)

    def process(self, name: str, pid: int | None, where: str) -> None:
        super().process(name, pid, where)
        self._print(f"process {name} up: {where} (pid {pid})")

    def phase(self, text: str) -> None:
        if text != self.current_phase:
            self._print(text)
        super().phase(text)

    def update(self, sample: Sample) -> None:
        super().update(sample)
        self._flush_timeline()
        if sample.at - self._last_line >= PLAIN_EVERY_S:
            self._last_line = sample.at
            s = sample
            self._print(
                f"subscriptions {s.subscribed}/{self.mailboxes} | scenario "
                f"{min(s.generated, self.events)}/{self.events} | in {self.rate('emitted'):.0f}/s "
                f"({s.emitted}) | out {self.rate('published'):.0f}/s ({s.published}) | dead "
                f"letters {s.dead_letters} | snapshots {sum(s.snapshots.values())} | projector "
                f"applied {s.applied} lag {s.lag}"
            )

    def event(self, text: str) -> None:
        super().event(text)
        self._flush_timeline()

    def close(self) -> None:
        self._flush_timeline()

    def _flush_timeline(self) -> None:
        # merged entries are printed when they first appear; their final counts show in the end
        for entry in self.timeline[self._printed :]:
            self._print(f"» {entry.text}")
        self._printed = len(self.timeline)


def print_timeline(console: Console, view: View) -> None:
    """The whole timeline with final counts, for the report."""
    console.print("Timeline:")
    for entry in view.timeline:
        console.print(f"  {clock(entry.at)}  {entry.text}", markup=False, highlight=False)


def make_view(title: str, mailboxes: int, events: int, *, plain: bool) -> View:
    """The view for this output, with the demo process's own log records (warnings and worse;
    the children log into files) routed where they do not tear the live display."""
    view: View
    handler: logging.Handler
    if plain:
        console = Console(width=120, no_color=True, highlight=False, soft_wrap=False)
        view = PlainView(title, mailboxes, events, console, sys.stdout)
        handler = logging.StreamHandler(sys.stderr)
    else:
        view = LiveView(title, mailboxes, events, Console(highlight=False))
        handler = RichHandler(console=view.console, show_path=False)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return view
