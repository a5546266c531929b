"""What a chaos run checks its invariants with: a ledger of every event the simulator emitted,
the malformed payloads it was made to send, and readers that follow the pipeline's topics.

- `Ledger` taps the simulator's Notifier (an instance attribute over `Notifier.send`, which
  every publication — live, after downtime, duplicated — goes through) and keeps each event's
  identity: (mailbox, USN, EventType, message ids). The events topic may hold only those, plus
  gap-repair snapshots.
- `MalformedInjector` puts malformed payloads on live channels, each carrying a unique marker
  (`chaos-<seed>-<n>`), some of them twice: the dead-letter topic must hold every marker, as many
  times as it was delivered, and nothing else.
- `TopicReader` reads a topic from the beginning and follows it, decoding every record once and
  folding the events/snapshots into a `Projection` as it goes.
- `FaultMeter` measures the processes during one fault (log lines, CPU, records held, events
  acknowledged) and when acknowledgements resume; `EndOffsets` when writes to given partitions
  go through again (a cluster node's partitions after it was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from chaos.processes import Service
from ingest.errors import DecodeError
from ingest.eventlog import codec
from ingest.eventlog.topics import describe_topic
from ingest.events import DeadLetter, MailboxEvent, MailboxSnapshot, RejectReason
from ingest.simulator import Simulator
from ingest.simulator.comet import CHANNEL_PREFIX, bayeux_message, event_data, format_time
from ingest.simulator.faults import MalformedKind, malformed
from ingest.simulator.mailbox import Mailbox, Message
from ingest.state.projection import Projection

EventKey = tuple[str, int, str, tuple[str, ...]]
"""(MailboxId, USN, EventType, sorted message ids): what makes two events the same event."""
MARKER = re.compile(rb"chaos-\d+-\d+")


def event_key(mailbox_id: str, usn: int, event_type: str, message_ids: Sequence[str]) -> EventKey:
    return mailbox_id, usn, event_type, tuple(sorted(message_ids))


class Ledger:
    """Every event the simulator's Notifier published, by identity."""

    def __init__(self, sim: Simulator) -> None:
        self.emitted: set[EventKey] = set()
        self.history: dict[str, list[str]] = {}
        """message id → what the Notifier sent about it, for failure reports."""
        notifier = sim.notifier
        send = notifier.send

        def recording_send(
            mailbox: Mailbox, event_type: Any, usn: int, messages: Sequence[Message]
        ) -> int:
            ids = [m.message_id for m in messages]
            self.emitted.add(event_key(mailbox.alias, usn, str(event_type), ids))
            reached = send(mailbox, event_type, usn, messages)
            for message_id in ids:
                self.history.setdefault(message_id, []).append(
                    f"sent usn={usn} {event_type} to {reached} sessions"
                    f"{'' if notifier.is_up else ' (notifier down)'}"
                )
            return reached

        notifier.send = recording_send  # type: ignore[method-assign]

    def invented(self, records: Sequence[object], sim: Simulator) -> list[str]:
        """Records of the events topic that the simulator never sent (snapshots of known mailboxes
        at a USN they reached are fine: gap repair takes them from the server)."""
        problems = []
        for record in records:
            if isinstance(record, MailboxEvent):
                key = event_key(
                    record.mailbox_id,
                    record.usn,
                    record.event_type.value,
                    [m.message_id for m in record.messages],
                )
                if key not in self.emitted:
                    problems.append(f"invented event {key}")
            elif isinstance(record, MailboxSnapshot):
                mailbox = sim.scenario.mailboxes.get(record.mailbox_id)
                if mailbox is None or record.usn > mailbox.usn:
                    problems.append(f"snapshot of {record.mailbox_id} at USN {record.usn}")
            else:
                problems.append(f"a {type(record).__name__} on the events topic")
        return problems


@dataclass(slots=True)
class MalformedInjector:
    """Malformed payloads (the simulator's own kinds) on live channels, each with a marker."""

    sim: Simulator
    seed: int
    duplicate_share: float = 0.3
    injected: dict[str, int] = field(default_factory=dict)
    """marker → times delivered to the worker's session."""
    kinds: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"chaos-malformed-{self.seed}")

    def live_channels(self) -> list[str]:
        return sorted(ch for ch, sessions in self.sim.bayeux.channels.items() if len(sessions) == 1)

    def inject(self, count: int) -> int:
        """Up to `count` payloads now; returns how many were delivered (each to one session)."""
        done = 0
        for _ in range(count):
            channels = self.live_channels()
            if not channels:
                break
            channel = self._rng.choice(channels)
            alias = self.sim.subscriptions.mailbox_of(channel[len(CHANNEL_PREFIX) :])
            if alias is None:
                continue
            marker = f"chaos-{self.seed}-{len(self.injected)}"
            kind = self._rng.choice(list(MalformedKind))
            payload = self._payload(alias, channel, kind, marker)
            copies = 2 if self._rng.random() < self.duplicate_share else 1
            delivered = sum(self.sim.bayeux.deliver(channel, payload) for _ in range(copies))
            if delivered:
                self.injected[marker] = delivered
                self.kinds[kind.value] += 1
                done += 1
        return done

    def _payload(self, alias: str, channel: str, kind: MalformedKind, marker: str) -> bytes:
        mailbox = self.sim.scenario.mailboxes[alias]
        valid = event_data(
            infos=[{"MessageId": f"ghost-{marker}", "MsgType": "Voice", "CallerAni": "null"}],
            usn=mailbox.usn,
            event_time=format_time(dt.datetime.now(dt.UTC)),
            subscription_id=channel[len(CHANNEL_PREFIX) :],
            mailbox_id=alias,
            event_type="NEW_MESSAGE",
            display_name=mailbox.user.display_name,
        )
        broken = malformed(kind, valid, self._rng)
        if isinstance(broken, dict):
            broken["ChaosId"] = marker
        elif isinstance(broken, list):
            broken[0]["ChaosId"] = marker
        else:
            broken = f"{broken} ChaosId={marker}"
        return bayeux_message(channel, broken)

    @property
    def deliveries(self) -> int:
        return sum(self.injected.values())

    def check(self, letters: Sequence[object], corrupted: int = 0) -> dict[str, int]:
        """Mismatches between the dead-letter topic and what was injected (all 0 when exact):
        the marked payloads, and `corrupted` unmarked ones (the simulator's corrupt fault sent
        that many malformed payloads in place of real events)."""
        seen: Counter[str] = Counter()
        unexpected = unmarked = 0
        for letter in letters:
            if not isinstance(letter, DeadLetter) or letter.reason not in set(RejectReason):
                unexpected += 1
                continue
            markers = {m.decode() for m in MARKER.findall(letter.raw)}
            if not markers:
                unmarked += 1
                continue
            if len(markers) != 1 or not markers <= set(self.injected):
                unexpected += 1
                continue
            seen[markers.pop()] += 1
        return {
            "dead letters not injected": unexpected + max(0, unmarked - corrupted),
            "malformed payloads not dead-lettered": len(set(self.injected) - set(seen)),
            "corrupted payloads not dead-lettered": max(0, corrupted - unmarked),
            "dead-letter count off": abs(len(letters) - self.deliveries - corrupted),
            "dead letters per payload off": sum(abs(seen[m] - n) for m, n in self.injected.items()),
        }


class TopicReader:
    """A topic from its first record on, followed; records decoded once, per partition in order."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self.records: dict[int, list[object]] = {}
        self.values: list[bytes] = []
        """Every record value as read (for searching raw bytes)."""
        self.undecodable = 0
        self.projection = Projection()

    async def start(self) -> None:
        described = await describe_topic(self._topic, bootstrap_servers=self._bootstrap)
        assert described is not None, f"no topic {self._topic}"
        self._partitions = [TopicPartition(self._topic, p) for p in range(described[0])]
        self.records = {tp.partition: [] for tp in self._partitions}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, max_poll_records=5000
        )
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def catch_up(self, within: float = 60.0) -> dict[int, int]:
        """Read up to the current end of every partition; returns those end offsets."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        ends = await consumer.end_offsets(self._partitions)
        async with asyncio.timeout(within):
            while True:
                behind = [tp for tp in self._partitions if await consumer.position(tp) < ends[tp]]
                if not behind:
                    return {tp.partition: end for tp, end in ends.items()}
                batch = await consumer.getmany(*behind, timeout_ms=500, max_records=2000)
                for tp, received in batch.items():
                    for message in received:
                        self._take(tp.partition, message.value)
                    await asyncio.sleep(0)  # the simulator shares this event loop

    def _take(self, partition: int, value: bytes | None) -> None:
        if value is None:
            return
        self.values.append(value)
        try:
            record = codec.decode(value)
        except DecodeError:
            self.undecodable += 1
            return
        self.records[partition].append(record)
        if isinstance(record, MailboxEvent | MailboxSnapshot):
            self.projection.apply(record)

    def history(self, message_id: str) -> list[str]:
        """What the topic says about one message, in partition order."""
        lines = []
        for record in self.decoded():
            if isinstance(record, MailboxEvent):
                if any(m.message_id == message_id for m in record.messages):
                    lines.append(f"event usn={record.usn} {record.event_type.value}")
            elif isinstance(record, MailboxSnapshot):
                for folder, listing in (("inbox", record.inbox), ("deleted", record.deleted)):
                    for m in listing:
                        if m.message_id.removeprefix("0:") == message_id:
                            lines.append(
                                f"snapshot usn={record.usn} {record.reason}: {folder} "
                                f"{'read' if m.read else 'unread'}"
                            )
        return lines

    def decoded(self) -> list[object]:
        return [r for partition in sorted(self.records) for r in self.records[partition]]


async def worker_totals(worker: Service) -> Counter[str] | None:
    """A worker's /metrics summed by sample name (labels added up); None if it does not answer."""
    try:
        _, text = await worker.get_text("/metrics")
    except (aiohttp.ClientError, TimeoutError):
        return None
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += int(sample.value)
    return totals


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """time.monotonic()"""
    held: int
    """Records the workers hold unacknowledged (`cumi_worker_queue_events`, all workers)."""
    published: int
    """Events Kafka acknowledged so far (`cumi_worker_events_published_total`, all workers)."""


class FaultMeter:
    """What the pipeline did during one fault: per process the log lines it wrote and the share
    of a core it used (from `begin()` to `figures()`), and from the workers' /metrics, sampled
    every `every` s, the most records held unacknowledged and the events acknowledged meanwhile.
    `resumed_after()` tells when acknowledgements came again after the fault was lifted."""

    def __init__(
        self, services: Sequence[Service], workers: Sequence[Service], every: float = 0.25
    ) -> None:
        self._services = services
        self._workers = workers
        self._every = every
        self._before: dict[str, tuple[int, float]] = {}
        self._t0 = 0.0
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        self._before = {s.name: s.usage() for s in self._services}
        self._t0 = time.monotonic()
        self.samples = []
        self._task = asyncio.create_task(self._sample(), name="fault-meter")

    async def end(self) -> None:
        """Stop sampling; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def figures(self) -> dict[str, Any]:
        """Since `begin()`: seconds, per service log lines (per minute) and CPU %, and the
        workers' most records held and events acknowledged."""
        seconds = time.monotonic() - self._t0
        out: dict[str, Any] = {"seconds": round(seconds, 1)}
        for service in self._services:
            lines, cpu = service.usage()
            lines0, cpu0 = self._before[service.name]
            out[service.name] = {
                "log_lines": lines - lines0,
                "log_lines_per_minute": round((lines - lines0) * 60 / seconds, 1),
                "cpu_percent": round(100 * (cpu - cpu0) / seconds, 1) if cpu >= cpu0 >= 0 else None,
            }
        samples = self.samples
        out["held_max"] = max((s.held for s in samples), default=None)
        out["acknowledged"] = samples[-1].published - samples[0].published if samples else None
        return out

    def acknowledged_since(self, moment: float) -> int | None:
        """Events acknowledged from the first sample after `moment` to the latest one."""
        after = [sample for sample in self.samples if sample.at >= moment]
        return after[-1].published - after[0].published if after else None

    def longest_stall(self) -> float | None:
        """The longest time, in seconds, with no event acknowledged (between samples)."""
        if not self.samples:
            return None
        longest, changed = 0.0, self.samples[0]
        for sample in self.samples[1:]:
            if sample.published != changed.published:
                changed = sample
            longest = max(longest, sample.at - changed.at)
        return round(longest, 2)

    async def resumed_after(self, moment: float, within: float = 120.0) -> float:
        """Seconds from `moment` to the first sample after it with more events acknowledged
        than the sample before (waited for, up to `within` s)."""
        async with asyncio.timeout(within):
            while True:
                for before, sample in itertools.pairwise(self.samples):
                    if sample.at > moment and sample.published > before.published:
                        return round(sample.at - moment, 2)
                await asyncio.sleep(self._every)

    async def _sample(self) -> None:
        while True:
            held = published = 0
            complete = True
            for worker in self._workers:
                totals = await worker_totals(worker)
                if totals is None:
                    complete = False
                    break
                held += totals["cumi_worker_queue_events"]
                published += totals["cumi_worker_events_published_total"]
            if complete:
                self.samples.append(Sample(time.monotonic(), held, published))
            await asyncio.sleep(self._every)


class EndOffsets:
    """The end offsets of a topic's partitions, asked again and again by a consumer that reads
    nothing: when did writes to these partitions go through again after a node was lost?"""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._topic = topic
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=5000
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def read(self, partitions: Collection[int] | None = None) -> dict[int, int] | None:
        """Current end offsets (of `partitions`, default all), None if not all could be read
        within a few seconds (a partition without a working leader)."""
        wanted = [tp for tp in self._partitions if partitions is None or tp.partition in partitions]
        try:
            async with asyncio.timeout(6):
                ends = await self._consumer.end_offsets(wanted)
        except (KafkaError, TimeoutError):
            return None
        return {tp.partition: offset for tp, offset in ends.items()}

    async def advanced(self, since: dict[int, int], within: float = 120.0) -> None:
        """Wait until each partition of `since` has its end offset beyond the one given."""
        waiting = dict(since)
        async with asyncio.timeout(within):
            while waiting:
                now = await self.read(waiting)
                if now is not None:
                    waiting = {p: o for p, o in waiting.items() if now[p] <= o}
                if waiting:
                    await asyncio.sleep(0.2)
