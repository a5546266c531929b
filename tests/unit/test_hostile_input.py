"""Hostile input: whatever a server (or a file) sends, the parser and `ingest fold` never crash,
every rejection is classified (a `RejectReason`, a one-line detail, a dead letter that encodes),
and oversized or deeply nested input is rejected with bounded memory.

Sizes: a few hundred generated inputs per run of the suite; `make soak` (RELIABILITY_SOAK=1) runs
2,500 per fuzz test, over 10,000 in all. Each test's input count and the memory peaks go to the
results log (`chaos.report`) for docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import re
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from chaos.report import record
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.commands.fold import fold_stream
from ingest.cumi.normalizer import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    MAX_DEAD_LETTER_RAW,
    TimeZones,
    _checked_event,
    _plain_event,
    _unwrap,
    dead_letter_for,
    parse_event,
)
from ingest.errors import InvalidEvent
from ingest.eventlog import codec
from ingest.events import LENIENT_FIELDS, EventType, MailboxEvent, RejectReason
from ingest.simulator.comet import event_data, format_time
from ingest.state.projection import Projection

EXAMPLES = settings().max_examples
"""Inputs per fuzz test: the profile's (tests/conftest.py), 100, or 2,500 under the soak."""
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
REASONS = frozenset(RejectReason)
MAX_DETAIL = 400
"""A rejection explains itself in a short line; it never echoes a large payload."""
REPO = Path(__file__).resolve().parents[2]

# -- strategies ----------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["null", "", " ", "\x00", "\ud800", "9" * 30, "0:", "NEW_MESSAGE"])
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
names = st.text(min_size=1, max_size=30).filter(lambda s: bool(s.strip()) and s != "null")
times = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 12, 31)).map(format_time)
usns = st.integers(0, 2**63 - 1) | st.integers(0, 10**9).map(str)


ascii_names = st.text(st.characters(codec="ascii"), min_size=1, max_size=12).filter(
    lambda s: s != "null"
)
"""Most server strings are ASCII: the normalizer's fast path takes only those."""


@st.composite
def message_infos(draw: st.DrawFn, names: st.SearchStrategy[str] = names) -> dict[str, str]:
    info = {"MessageId": draw(st.uuids().map(str) | names | names.map("0:".__add__))}
    for field, values in (
        ("CallerAni", st.just("null") | names),
        ("Sender", st.just("null") | names),
        ("ReceiveTime", times),
        ("Priority", st.sampled_from(["Normal-Priority", "Urgent-Priority"])),
        ("MsgType", st.sampled_from(["Voice", "Fax", "Email"])),
    ):
        if draw(st.booleans()):
            info[field] = draw(values)
    return info


@st.composite
def valid_events(draw: st.DrawFn, names: st.SearchStrategy[str] = names) -> dict[str, Any]:
    """A notification the parser must accept (in the vendor's shape, sometimes in an envelope)."""
    subscription = draw(st.uuids().map(str))
    data = event_data(
        infos=draw(st.lists(message_infos(names), min_size=1, max_size=3)),
        usn=0,
        event_time=draw(times),
        subscription_id=subscription,
        mailbox_id=draw(names),
        event_type=draw(st.sampled_from(list(EventType))).value,
        display_name=draw(st.just("null") | names),
    )
    data["USN"] = draw(usns)
    if not draw(st.booleans()):
        return data
    if draw(st.booleans()):
        del data["SubscriptionId"]  # the channel names it
    return {"channel": f"/vmrest/mailbox/{subscription}", "data": data}


DISPLAY_FIELDS = ("EventTime", "SubscriptionId", "DisplayName")
MESSAGE_DISPLAY_FIELDS = ("CallerAni", "Sender", "MsgType", "Priority", "ReceiveTime")
"""Every field but the four that decide (MailboxId, EventType, USN, MessageId)."""
IRREGULAR_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [
        "N/A",
        "30/10/2008 16:15:40",
        "11:15:40 PM 10/30/2008 +0100",
        "2008-10-30T23:15:40Z",
        "Very-Urgent",
        "",
        " ",
        "\ud800",
        4085550100,
        1.5,
        True,
        None,
        "null",
        [],
        {"x": 1},
    ]
)


@st.composite
def irregular_events(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a valid event, the same event with display fields dropped or given odd values)."""
    valid = draw(valid_events(ascii_names.filter(str.strip) | names))
    event = json.loads(json.dumps(valid))
    data = event["data"] if "channel" in event else event
    edits = draw(st.lists(st.tuples(st.integers(-1, 2), st.booleans()), min_size=1, max_size=5))
    for index, drop in edits:
        infos = data["MessageInfo"]
        target = data if index < 0 else infos[index % len(infos)]
        fields = DISPLAY_FIELDS if index < 0 else MESSAGE_DISPLAY_FIELDS
        field = draw(st.sampled_from(fields))
        if drop:
            target.pop(field, None)
        else:
            target[field] = draw(IRREGULAR_VALUES | json_values)
    return valid, event


def folder_change(event: MailboxEvent) -> tuple[object, ...]:
    """What an event says about folder state: the deciding fields."""
    ids = tuple(m.message_id for m in event.messages)
    return event.mailbox_id, event.usn, event.event_type, ids


HOSTILE_VALUES = json_values | st.sampled_from(
    [2**63, -1, 10**40, 1.5, True, [], {}, "", "\ud800", "x" * 5000, "25:61:00 XM 13/45/2008"]
)


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with up to four hostile edits: fields dropped, retyped, renamed, nested."""
    event = draw(valid_events())
    data = event["data"] if "channel" in event else event
    for _ in range(draw(st.integers(1, 4))):
        target = data
        infos = data.get("MessageInfo")
        objects = [i for i in infos if isinstance(i, dict)] if isinstance(infos, list) else []
        if bool(objects) and draw(st.booleans()):
            target = draw(st.sampled_from(objects))
        keys = sorted(target) or ["MailboxId"]
        match draw(st.sampled_from(["drop", "set", "rename", "extra", "infos", "envelope"])):
            case "drop":
                target.pop(draw(st.sampled_from(keys)), None)
            case "set":
                target[draw(st.sampled_from(keys))] = draw(HOSTILE_VALUES)
            case "rename":
                key = draw(st.sampled_from(keys))
                target[key.lower() if draw(st.booleans()) else key + " "] = target.pop(key, None)
            case "extra":
                target[draw(st.text(max_size=8))] = draw(json_values)
            case "infos":
                data["MessageInfo"] = draw(
                    st.sampled_from([[], "m1", [1], [[]], {"MessageId": "m1"}]) | json_values
                )
            case "envelope":
                event = {
                    "channel": draw(st.text(max_size=30)),
                    "data": draw(json_values | st.just(data)),
                }
    return event


@st.composite
def hostile_wire(draw: st.DrawFn) -> bytes:
    """The bytes of a (possibly hostile) event, then damaged on the wire."""
    raw = json.dumps(draw(hostile_events())).encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        match draw(
            st.sampled_from(["cut", "insert", "flip", "bom", "utf16", "dupkey", "tail", "nest"])
        ):
            case "cut":
                raw = raw[:at]
            case "insert":
                raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
            case "flip" if raw:
                at = min(at, len(raw) - 1)
                raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
            case "bom":
                raw = b"\xef\xbb\xbf" + raw
            case "utf16":
                raw = raw.decode("utf-8", "replace").encode("utf-16")
            case "dupkey" if raw.startswith(b"{"):
                raw = b'{"USN":"dup","MailboxId":7,' + raw[1:]
            case "tail":
                raw += draw(st.sampled_from([b"}", b",", b"{}", b"\x00", b"\n{}", b" // x"]))
            case "nest":
                depth = draw(st.integers(DEFAULT_MAX_DEPTH - 3, DEFAULT_MAX_DEPTH + 40))
                raw = b'{"MailboxId":"a","X":' + b"[" * depth + b"]" * depth + b"," + raw[1:]
    return raw


# -- the property ----------------------------------------------------------------------------------


def classify(raw: Any) -> MailboxEvent | RejectReason:
    """parse_event, held to the contract: an event that encodes and folds, or an InvalidEvent with
    a RejectReason, a short single-line detail and a dead letter that encodes and fits Kafka."""
    try:
        event = parse_event(raw, source="fuzz", now=lambda: NOW)
    except InvalidEvent as e:
        assert e.reason in REASONS, f"unclassified reason {e.reason!r}"
        assert isinstance(e.detail, str) and e.detail, "a rejection must say why"
        assert len(str(e)) <= MAX_DETAIL and "\n" not in str(e), f"unbounded detail: {e!s:.200}"
        assert e.field is None or (isinstance(e.field, str) and "\n" not in e.field)
        letter = dead_letter_for(raw, e, "fuzz", NOW)
        assert letter.reason == e.reason
        assert len(letter.raw) <= MAX_DEAD_LETTER_RAW
        assert codec.decode(codec.encode(letter)) == letter
        return RejectReason(e.reason)
    assert event.mailbox_id.strip() and event.messages
    assert event.subscription_id is None or event.subscription_id.strip()
    assert {f.name for f in event.unparsed} <= set(LENIENT_FIELDS)
    assert 0 <= event.usn < 2**63
    assert codec.decode(codec.encode(event)) == event
    Projection().apply(event)
    return event


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


class Inputs:
    """Counts what a fuzz test was really given, for the results log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: Counter[str] = Counter()

    def saw(self, outcome: MailboxEvent | RejectReason) -> None:
        self.outcomes["accepted" if isinstance(outcome, MailboxEvent) else str(outcome)] += 1

    def report(self) -> None:
        total = sum(self.outcomes.values())
        record("fuzz", test=self.name, inputs=total, outcomes=dict(sorted(self.outcomes.items())))
        # hypothesis may stop early only when a strategy runs out of distinct inputs
        assert total >= EXAMPLES


class TestParserFuzz:
    """parse_event under generated hostile payloads: an event or a classified rejection."""

    def test_hostile_events_agree_across_mapping_text_and_bytes(self) -> None:
        inputs = Inputs("parse_event: hostile events as mapping, text and bytes")

        @given(hostile_events())
        def check(event: dict[str, Any]) -> None:
            text = json.dumps(event)  # ASCII-escaped: lone surrogates survive the trip
            outcomes = [classify(event), classify(text), classify(text.encode())]
            inputs.saw(outcomes[0])
            if depth(event) <= DEFAULT_MAX_DEPTH:  # a mapping skips the transport's limits
                accepted = [isinstance(o, MailboxEvent) for o in outcomes]
                assert len(set(accepted)) == 1, f"forms disagree: {outcomes}"
                if accepted[0]:
                    assert outcomes[0] == outcomes[1] == outcomes[2]

        check()
        inputs.report()

    def test_the_fast_path_gives_the_checked_result_or_steps_aside(self) -> None:
        """`_plain_event` (the hot path) returns what `_checked_event` returns, or None."""
        zones = TimeZones(receive_time=ZoneInfo("America/Los_Angeles"))
        taken = Counter[str]()

        @given(valid_events(ascii_names) | valid_events() | hostile_events())
        def check(event: dict[str, Any]) -> None:
            if not isinstance(event.get("data", {}), dict):
                return
            data, channel = _unwrap(event)
            fast = _plain_event(data, zones, "cuc1", NOW)
            try:
                checked: MailboxEvent | str = _checked_event(data, channel, zones, "cuc1", NOW)
            except InvalidEvent as e:
                checked = e.reason
            taken["fast" if fast is not None else "checked"] += 1
            assert fast is None or fast == checked

        check()
        # the property is only worth something if the fast path is actually taken
        assert taken["fast"] >= EXAMPLES // 10, taken

    def test_the_fast_path_on_irregular_display_fields(self) -> None:
        """The same, on events whose display fields are odd or missing: the checked path
        tolerates them (`unparsed`); the fast path takes the plain ones to the same event."""
        zones = TimeZones(receive_time=ZoneInfo("America/Los_Angeles"))
        taken = Counter[str]()

        @given(irregular_events())
        def check(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
            data, channel = _unwrap(pair[1])
            fast = _plain_event(data, zones, "cuc1", NOW)
            checked = _checked_event(data, channel, zones, "cuc1", NOW)
            taken["fast" if fast is not None else "checked"] += 1
            taken["unparsed" if checked.unparsed else "clean"] += 1
            assert fast is None or fast == checked
            assert fast is None or not fast.unparsed

        check()
        assert taken["fast"] >= EXAMPLES // 20 and taken["unparsed"] >= EXAMPLES // 4, taken

    def test_only_the_deciding_fields_can_reject(self) -> None:
        """Whatever happens to the other fields, the event is accepted with its folder change,
        in every form, and what it could not read is listed by a known field name."""
        inputs = Inputs("parse_event: valid events with irregular display fields")

        @given(irregular_events())
        def check(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
            valid, irregular = pair
            expected = folder_change(parse_event(valid, now=lambda: NOW))
            text = json.dumps(irregular)
            for form in (irregular, text, text.encode()):
                outcome = classify(form)
                assert isinstance(outcome, MailboxEvent), f"rejected: {outcome} for {text:.300}"
                assert folder_change(outcome) == expected
            inputs.saw(outcome)

        check()
        inputs.report()

    def test_valid_events_are_accepted(self) -> None:
        inputs = Inputs("parse_event: generated valid events")

        @given(valid_events())
        def check(event: dict[str, Any]) -> None:
            outcome = classify(json.dumps(event).encode())
            inputs.saw(outcome)
            assert isinstance(outcome, MailboxEvent), f"a valid event was rejected: {outcome}"

        check()
        inputs.report()

    def test_damaged_wire_bytes(self) -> None:
        inputs = Inputs("parse_event: hostile events damaged on the wire")

        @given(hostile_wire())
        def check(raw: bytes) -> None:
            inputs.saw(classify(raw))

        check()
        inputs.report()

    def test_arbitrary_bytes_text_and_json(self) -> None:
        inputs = Inputs("parse_event: arbitrary bytes, text and JSON values")

        @given(st.binary(max_size=400) | st.text(max_size=400) | json_values)
        def check(raw: Any) -> None:
            if isinstance(raw, bytes | str):
                inputs.saw(classify(raw))
            else:
                inputs.saw(classify(json.dumps(raw)))
                if isinstance(raw, dict):
                    classify(raw)

        check()
        inputs.report()


# -- fold --------------------------------------------------------------------------------------

FOLD_LIMIT = 2048
"""A small line limit so generated long lines exercise the skipping path cheaply."""
REPORT = re.compile(r"line (\d+): ([a-z_]+)(?: \(field [^)]*\))?: .*")


@st.composite
def coherent_lines(draw: st.DrawFn) -> bytes:
    """A valid event of a tiny world (2 mailboxes, 4 messages, USNs 0..12): lines then collide,
    repeat and go stale, which exercises the projection, not only the parser."""
    data = event_data(
        infos=[{"MessageId": m} for m in draw(st.sets(st.sampled_from("wxyz"), min_size=1))],
        usn=draw(st.integers(0, 12)),
        event_time="11:15:40 PM 10/30/2008",
        subscription_id="sub",
        mailbox_id=draw(st.sampled_from(["abell", "cdarwin"])),
        event_type=draw(st.sampled_from(list(EventType))).value,
        display_name="null",
    )
    return json.dumps(data).encode()


fold_chunks = st.lists(
    coherent_lines()
    | hostile_events().map(lambda e: json.dumps(e).encode())
    | hostile_wire()
    | st.binary(max_size=60)
    | st.sampled_from([b"", b"   ", b"\r", b"\t\x0b\x0c", b"x" * (FOLD_LIMIT + 1), b"{" * 5000])
    | coherent_lines().map(lambda line: line + b"\r")
    | coherent_lines().map(lambda line: b" " * (FOLD_LIMIT - len(line) + 1) + line),
    max_size=15,
)


def reference_fold(data: bytes) -> tuple[dict[str, Any], dict[int, str], Counter[str]]:
    """What `ingest fold` must produce for `data`, computed line by line without streaming."""
    segments = data.split(b"\n")
    if segments and segments[-1] == b"":
        segments.pop()
    projection, rejected, counts = Projection(), {}, Counter[str]()
    for number, segment in enumerate(segments, 1):
        counts["lines"] += 1
        if len(segment) > FOLD_LIMIT:
            rejected[number] = RejectReason.TOO_LARGE.value
            continue
        if not segment.strip():
            counts["blank"] += 1
            continue
        try:
            event = parse_event(segment.strip(), max_bytes=FOLD_LIMIT)
        except InvalidEvent as e:
            rejected[number] = str(e.reason)
            continue
        counts[str(projection.apply(event))] += 1
    return projection.to_json(), rejected, counts


class TestFoldFuzz:
    """`ingest fold` on generated hostile streams equals a line-by-line reference, reports every
    invalid line on one stderr line with its reason, and never stops early."""

    def test_hostile_streams(self) -> None:
        inputs = Inputs("ingest fold: hostile JSON-lines streams")

        @given(fold_chunks)
        def check(chunks: list[bytes]) -> None:
            data = b"\n".join(chunks)
            report = io.StringIO()
            projection = Projection()
            stats = fold_stream(io.BytesIO(data), projection, TimeZones(), report, FOLD_LIMIT)
            expected, rejected, counts = reference_fold(data)
            assert projection.to_json() == expected
            lines = report.getvalue().splitlines()
            found = {}
            for line in lines:
                match = REPORT.fullmatch(line)
                assert match, f"report line not classified: {line!r}"
                assert match.group(2) in REASONS
                found[int(match.group(1))] = match.group(2)
            assert found == rejected and len(lines) == len(rejected) == stats.invalid
            assert (stats.lines, stats.blank) == (counts["lines"], counts["blank"])
            assert (stats.applied, stats.duplicates, stats.stale) == (
                counts["applied"],
                counts["duplicate"],
                counts["stale"],
            )
            inputs.outcomes["streams"] += 1
            inputs.outcomes["lines"] += stats.lines

        check()
        streams, lines = inputs.outcomes["streams"], inputs.outcomes["lines"]
        record("fuzz", test=inputs.name, inputs=streams, lines=lines)
        assert streams >= EXAMPLES


# -- oversized and deeply nested -------------------------------------------------------------------

HUGE = 50 * 1024 * 1024
DEEP = 100_000
MEMORY_BOUND = 4 * 1024 * 1024
"""Peak traced allocations allowed while rejecting a 50 MB or 100k-deep input: well under the
input's own size, i.e. nothing proportional to it is built."""


def peak_memory(action: Callable[[], object]) -> tuple[object, int]:
    """(what `action` returned or raised, peak bytes allocated while it ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            outcome: object = action()
        except InvalidEvent as e:
            outcome = e
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


def huge_event() -> bytes:
    """A well-formed notification whose DisplayName makes it 50 MB."""
    head = b'{"MailboxId":"abell","USN":1,"EventType":"NEW_MESSAGE","DisplayName":"'
    tail = (
        b'","EventTime":"11:15:40 PM 10/30/2008","SubscriptionId":"s",'
        b'"MessageInfo":[{"MessageId":"m"}]}'
    )
    return head + b"x" * (HUGE - len(head) - len(tail)) + tail


def deep_event() -> bytes:
    """A notification carrying an extra field nested 100,000 levels deep."""
    return (
        b'{"MailboxId":"abell","USN":1,"X":'
        + b"[" * DEEP
        + b"]" * DEEP
        + b',"EventType":"NEW_MESSAGE","EventTime":"11:15:40 PM 10/30/2008",'
        b'"SubscriptionId":"s","MessageInfo":[{"MessageId":"m"}]}'
    )


def expect_rejection(outcome: object, reason: RejectReason) -> InvalidEvent:
    assert isinstance(outcome, InvalidEvent), f"accepted: {outcome!r:.200}"
    assert outcome.reason == reason, outcome
    assert len(str(outcome)) <= MAX_DETAIL
    return outcome


class TestBoundedMemory:
    """Oversized and deeply nested payloads are refused with a clear reason, and refusing them
    allocates nothing proportional to their size (measured with tracemalloc)."""

    @pytest.mark.parametrize("form", ["bytes", "text"])
    def test_50_mb_payload(self, form: str) -> None:
        raw: bytes | str = huge_event() if form == "bytes" else huge_event().decode()
        outcome, peak = peak_memory(lambda: parse_event(raw))
        error = expect_rejection(outcome, RejectReason.TOO_LARGE)
        assert f"exceeds {DEFAULT_MAX_BYTES}" in error.detail
        record("memory", case=f"parse_event, 50 MB payload ({form})", peak_bytes=peak)
        assert peak < MEMORY_BOUND

    @pytest.mark.parametrize("shape", ["arrays", "objects", "inside an event"])
    def test_100k_deep_nesting(self, shape: str) -> None:
        raw = {
            "arrays": b"[" * DEEP + b"]" * DEEP,
            "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
            "inside an event": deep_event(),
        }[shape]
        assert len(raw) < DEFAULT_MAX_BYTES  # refused for its depth, not its size
        outcome, peak = peak_memory(lambda: parse_event(raw))
        expect_rejection(outcome, RejectReason.TOO_DEEP)
        record("memory", case=f"parse_event, 100k-deep nesting ({shape})", peak_bytes=peak)
        assert peak < MEMORY_BOUND

    def test_nesting_just_past_the_limit_is_too_deep(self) -> None:
        # decodable by json (below its recursion limit) but deeper than the setting allows
        depth = DEFAULT_MAX_DEPTH + 1
        raw = b'{"MailboxId":"a","X":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
        error = expect_rejection(peak_memory(lambda: parse_event(raw))[0], RejectReason.TOO_DEEP)
        assert str(DEFAULT_MAX_DEPTH) in error.detail

    def test_dead_letter_of_a_50_mb_payload(self) -> None:
        raw = huge_event()
        error = expect_rejection(peak_memory(lambda: parse_event(raw))[0], RejectReason.TOO_LARGE)
        letter, peak = peak_memory(lambda: dead_letter_for(raw, error, "fuzz", NOW))
        assert isinstance(letter, type(dead_letter_for(b"", error)))
        assert letter.raw == raw[:MAX_DEAD_LETTER_RAW]
        assert f"raw truncated from {HUGE} bytes" in letter.detail
        assert letter.mailbox_id == "abell"
        assert len(codec.encode(letter)) < MAX_DEAD_LETTER_RAW + 4096
        record("memory", case="dead_letter_for, 50 MB payload", peak_bytes=peak)
        assert peak < MEMORY_BOUND

    def test_fold_streams_past_a_50_mb_line(self, tmp_path: Path) -> None:
        valid = json.dumps(
            event_data(
                infos=[{"MessageId": "m1"}],
                usn=5,
                event_time="11:15:40 PM 10/30/2008",
                subscription_id="s",
                mailbox_id="abell",
                event_type="NEW_MESSAGE",
                display_name="Alexander Bell",
            )
        ).encode()
        path = tmp_path / "hostile.jsonl"
        with path.open("wb") as out:
            for line in (valid, huge_event(), deep_event(), b"[" * DEEP, valid.replace(b"5", b"6")):
                out.write(line + b"\n")
        report = io.StringIO()
        projection = Projection()

        def fold() -> object:
            with path.open("rb") as stream:
                return fold_stream(stream, projection, TimeZones(), report)

        stats, peak = peak_memory(fold)
        assert report.getvalue().splitlines() == [
            f"line 2: too_large: line longer than {DEFAULT_MAX_BYTES} bytes",
            "line 3: too_deep: nesting exceeds the JSON decoder's limit",
            "line 4: too_deep: nesting exceeds the JSON decoder's limit",
        ]
        assert projection.to_json() == {
            "abell": {"inbox": {"m1": {"read": False}}, "deleted": {}, "usn": 6}
        }
        assert getattr(stats, "invalid", None) == 3
        record("memory", case="ingest fold, 50 MB line and 100k-deep lines", peak_bytes=peak)
        assert peak < MEMORY_BOUND


class TestFoldCommand:
    """The real `ingest fold` process on a seeded hostile file: exit 0, the reference state on
    stdout, one classified stderr line per invalid line."""

    def test_hostile_file(self, tmp_path: Path) -> None:
        rng = random.Random(20240501)
        lines = list(hostile_file_lines(rng, 2_000))
        path = tmp_path / "hostile.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        done = subprocess.run(
            [sys.executable, "-m", "ingest", "fold", str(path)],
            capture_output=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        errors = done.stderr.decode().splitlines()
        summary = errors.pop()
        assert summary.startswith("fold: 2000 lines,")
        expected = Projection()
        invalid = 0
        for line in lines:
            if not line.strip():
                continue  # blank: neither applied nor invalid
            try:
                expected.apply(parse_event(line.strip()))
            except InvalidEvent:
                invalid += 1
        assert len(errors) == invalid and f"{invalid} invalid" in summary
        assert all(
            (m := REPORT.fullmatch(e)) is not None and m.group(2) in REASONS for e in errors
        ), errors[:5]
        assert json.loads(done.stdout) == expected.to_json()
        assert invalid > 500 and len(expected.mailboxes) == 3


def hostile_file_lines(rng: random.Random, count: int) -> Iterator[bytes]:
    """Valid events of three mailboxes mixed with broken, binary, oversized and deep lines."""
    kinds = list(EventType)
    for n in range(count):
        data = event_data(
            infos=[{"MessageId": f"m{rng.randrange(20)}"}],
            usn=rng.randrange(200),
            event_time="11:15:40 PM 10/30/2008",
            subscription_id="s",
            mailbox_id=rng.choice(["abell", "cdarwin", "mcurie"]),
            event_type=rng.choice(kinds).value,
            display_name="null",
        )
        roll = rng.random()
        if roll < 0.6:
            yield json.dumps(data).encode()
        elif roll < 0.75:
            data[rng.choice(list(data))] = rng.choice([None, 7, "", [], "null", -3])
            yield json.dumps(data).encode()
        elif roll < 0.85:
            raw = json.dumps(data).encode()
            yield raw[: rng.randrange(len(raw))]
        elif roll < 0.95:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b"")
        elif n % 2:
            yield b"[" * 50_000
        else:
            yield b'{"MailboxId":"abell","Pad":"' + b"x" * (DEFAULT_MAX_BYTES + 10) + b'"}'
