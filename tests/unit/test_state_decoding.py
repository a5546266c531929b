"""ingest.state.decoding: state-topic bytes straight to the `MailboxState` the reference builds.

The reference is `MailboxState.from_record(decode_state_record(value))` (what `decode_state`
does with the speedups off). The direct reader is compared with it with the speedups on and off
alike (`state_decoder()` does not look at the switch; `decode_state` does): the states equal as
objects (kept changes and floors included), as records and as the read API's detailed JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import fastavro
import pytest
from fixtures.producing import fold, generate
from fixtures.vendor_histories import LogCase, vendor_logs
from hypothesis import given
from test_state_encoding import any_moments, mailbox, mailbox_states, message

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import codec, wire
from ingest.eventlog.reader import decode_state_record
from ingest.events import EventType, Folder
from ingest.state import decoding, store
from ingest.state.decoding import StateDecoder
from ingest.state.projection import MailboxState, Projection
from ingest.state.store import decode_state, encode_state

V2_STATE = Path(__file__).resolve().parents[2] / "schemas" / "history" / "mailbox_state.v2.avsc"


def reader() -> StateDecoder:
    read = decoding.state_decoder()
    assert read is not None, "the state schema or the projection changed: see ingest.state.decoding"
    return read


def reference(value: bytes) -> MailboxState:
    return MailboxState.from_record(decode_state_record(value))


def assert_same(value: bytes, read: Callable[[bytes], MailboxState] | None = None) -> MailboxState:
    """The direct reader's state is the reference's, in every way the pipeline looks at it."""
    direct, expected = (read or reader())(value), reference(value)
    assert direct == expected
    assert direct.to_record() == expected.to_record()
    assert direct.to_json(detail=True) == expected.to_json(detail=True)
    assert list(direct.messages) == list(expected.messages)
    if speedups.ENABLED:  # the fold's shared change sets, as `from_record` interns them
        for message_id, message in direct.messages.items():
            other = expected.messages[message_id]
            assert message.applied is other.applied
            assert all(a[1] is b[1] for a, b in zip(message.earlier, other.earlier, strict=True))
    return direct


def v2_value(state: MailboxState) -> bytes:
    """`state` as a writer of state schema v2 wrote it (no `kept`, no `snapshot_taken_at`)."""
    schema = json.loads(V2_STATE.read_text(encoding="utf-8"))
    datum = codec._state_to_avro(state.to_record())
    del datum["snapshot_taken_at"]
    for entry in datum["messages"]:
        del entry["kept"]
    out = io.BytesIO()
    out.write(wire.header(wire.FAST_STATE_SCHEMA_V2))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), datum)
    return out.getvalue()


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def in_blocks(state: MailboxState) -> bytes:
    """`state` (two messages or more) with its messages in two blocks, the first giving its size
    in bytes too: a layout writers may use, which no writer of ours does."""
    ids = sorted(state.messages)
    empty = encode_state(dataclasses.replace(state, messages={}))
    parts = []
    for message_id in ids:
        one = encode_state(
            dataclasses.replace(state, messages={message_id: state.messages[message_id]})
        )
        prefix = next(i for i, (a, b) in enumerate(zip(empty, one, strict=False)) if a != b)
        suffix = len(empty) - prefix - 1
        parts.append(one[prefix + 1 : len(one) - suffix - 1])
    head, tail = empty[:prefix], empty[prefix + 1 :]
    first = b"".join(parts[:1])
    second = (_zigzag(len(parts) - 1), *parts[1:], b"\x00")
    return b"".join((head, _zigzag(-1), _zigzag(len(first)), first, *second, tail))


class TestSameStateAsTheReference:
    @given(mailbox_states(any_moments))
    def test_any_state(self, state: MailboxState) -> None:
        assert_same(encode_state(state))

    @given(mailbox_states(any_moments))
    def test_any_state_written_with_v2(self, state: MailboxState) -> None:
        assert_same(v2_value(state))

    @given(vendor_logs())
    def test_folded_vendor_logs(self, case: LogCase) -> None:
        """The states a fold makes: kept changes, floors, tombstones; v3 exactly as folded."""
        projection = Projection()
        for record in case.records:
            projection.apply(record)
        for state in projection.mailboxes.values():
            assert assert_same(encode_state(state)) == state
            assert_same(v2_value(state))

    def test_a_generated_stream(self) -> None:
        """What the replay benchmark folds: every kind of message state there is."""
        states = fold(generate(events=3000, mailboxes=40, seed=5).records).mailboxes.values()
        decoded = [assert_same(encode_state(state)) for state in states]
        messages = [m for state in decoded for m in state.messages.values()]
        assert any(m.earlier for m in messages) and any(not m.applied for m in messages)
        assert {m.floor_folder for m in messages} >= {Folder.INBOX, Folder.GONE}

    @pytest.mark.parametrize(
        "state",
        [
            mailbox(),
            MailboxState("empty"),
            mailbox(
                mailbox_id="é" * 100, updated_at=None, snapshot_taken_at=dt.datetime(1969, 1, 1)
            ),
            mailbox(usn=2**63 - 1, stale=-(2**63), duplicates=2**21, snapshot_usn=2**14),
            mailbox(messages={str(i) * 40: message(str(i), usn=i * 7919) for i in range(70)}),
            mailbox(
                messages={
                    "long strings": message(
                        "x", caller_ani="c" * 64, sender="ü" * 40, receive_time_raw="r" * 200
                    ),
                    "many changes": message(
                        "y",
                        usn=2**50,
                        applied=frozenset({EventType.DELETED_MESSAGE}),
                        earlier=tuple(
                            (2**49 + i, frozenset({EventType(t)}))
                            for i, t in enumerate(["DELETED_MESSAGE_DELETE"] * 70)
                        ),
                        floor_usn=2**40,
                    ),
                }
            ),
        ],
        ids=["kept", "empty", "long-id", "extremes", "70-messages", "long-fields"],
    )
    def test_examples(self, state: MailboxState) -> None:
        assert_same(encode_state(state))
        assert_same(v2_value(state))

    def test_messages_in_blocks_with_sizes(self) -> None:
        state = mailbox()
        value = in_blocks(state)
        assert value != encode_state(state)
        assert assert_same(value) == state


class TestWhatItDoesNotRead:
    def test_damage_is_left_to_the_reference(self) -> None:
        value = encode_state(mailbox())
        for broken in (value[:-1], value + b"\x00", value[:20], value[:12] + b"\xff" * 9):
            with pytest.raises(decoding.UNREADABLE):
                reader()(broken)
            with pytest.raises(DecodeError):
                decode_state(broken)

    def test_other_schemas(self) -> None:
        value = encode_state(mailbox())
        for header in (wire.header(wire.FAST_EVENT_SCHEMA), b"\x00" * wire.HEADER_SIZE):
            with pytest.raises(decoding.UNREADABLE):
                reader()(header + value[wire.HEADER_SIZE :])

    def test_the_store_falls_back_to_the_reference(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(value: bytes) -> MailboxState:
            raise ValueError("not this one")

        monkeypatch.setattr(store, "_FAST_READ", refuse)
        state = mailbox()
        assert decode_state(encode_state(state)) == state

    def test_in_use_unless_the_speedups_are_off(self) -> None:
        assert decoding.readable(), "mailbox_state.avsc or the projection's fields changed?"
        assert (store._FAST_READ is not None) is speedups.ENABLED


class TestTheComparisonCatchesABrokenReader:
    """`assert_same` is what the properties above rest on: it fails for readers that are wrong
    in the ways a direct reader could be."""

    def test_kept_changes_dropped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        kept = decoding._kept

        def forgetful(data: bytes, pos: int) -> tuple[object, ...]:
            _, *rest = kept(data, pos)
            return ((), *rest)

        monkeypatch.setattr(decoding, "_kept", forgetful)
        with pytest.raises(AssertionError):
            assert_same(encode_state(mailbox()))

    def test_v2_floor_not_derived(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(decoding, "is_stating", lambda types: True)
        decoding._changes.clear()
        try:
            with pytest.raises(AssertionError):
                assert_same(v2_value(mailbox()))
        finally:
            decoding._changes.clear()  # nothing remembered from the broken reader

    def test_a_flag_swapped(self) -> None:
        def swapped(value: bytes) -> MailboxState:
            state = reader()(value)
            message = state.messages["m2"]
            message.base_read = not message.base_read
            return state

        with pytest.raises(AssertionError):
            assert_same(encode_state(mailbox()), swapped)
