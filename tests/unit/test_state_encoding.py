"""ingest.state.encoding: the straight-line state writer writes exactly fastavro's bytes.

The reference is spelled out here (fastavro's `schemaless_writer` over the codec's datum of
`MailboxState.to_record()`), not taken from `codec.encode`, so the comparison holds whichever
writer the codec uses. The writer is compared with the speedups on and off alike
(`state_writer()` does not look at the switch; `encode_state` does).
"""

from __future__ import annotations

import datetime as dt
import io
import time

import fastavro
import pytest
from fixtures.record_strategies import ids, texts
from fixtures.vendor_histories import LogCase, vendor_logs
from hypothesis import given
from hypothesis import strategies as st

from ingest import speedups
from ingest.eventlog import codec, wire
from ingest.events import EventType, Folder, MailboxStateRecord
from ingest.state import encoding, store
from ingest.state.encoding import StateWriter
from ingest.state.projection import MailboxState, MessageState, Projection
from ingest.state.store import decode_state, encode_state, state_value

T0 = dt.datetime(2026, 11, 25, 8, 30, 15, 123000, tzinfo=dt.UTC)

longs = st.integers(-(2**63), 2**63 - 1) | st.integers(-1, 20_000)
"""Any Avro long, and the small ones (one to three bytes) USNs and counters usually are."""
zones: st.SearchStrategy[dt.tzinfo] = st.just(dt.UTC) | st.builds(
    dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23))
)
FIRST, LAST = dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1)
any_moments = st.datetimes(FIRST, LAST) | st.datetimes(FIRST, LAST, timezones=zones)
"""Naive datetimes mean UTC; other offsets are the same instant."""
whole_ms = st.datetimes(FIRST, LAST, timezones=st.just(dt.UTC)).map(
    lambda m: m.replace(microsecond=m.microsecond // 1000 * 1000)
)
"""What a round trip gives back as it was: UTC, whole milliseconds."""
changes = st.frozensets(st.sampled_from(EventType))


def message_states(moments: st.SearchStrategy[dt.datetime]) -> st.SearchStrategy[MessageState]:
    """Any field values, invariants or not: the writer is a function of the fields."""
    return st.builds(
        MessageState,
        folder=st.sampled_from(Folder),
        read=st.booleans(),
        usn=longs,
        applied=changes,
        base_folder=st.sampled_from(Folder),
        base_read=st.booleans(),
        earlier=st.lists(st.tuples(longs, changes.filter(bool)), max_size=3).map(tuple),
        floor_folder=st.sampled_from(Folder),
        floor_read=st.booleans(),
        floor_usn=longs,
        caller_ani=st.none() | texts,
        sender=st.none() | texts,
        msg_type=st.none() | st.sampled_from(["Voice", "Fax"]) | texts,
        priority=st.none() | st.sampled_from(["Normal-Priority", "Urgent"]),
        receive_time=st.none() | moments,
        receive_time_raw=st.none() | texts,
    )


def mailbox_states(
    moments: st.SearchStrategy[dt.datetime] = any_moments,
) -> st.SearchStrategy[MailboxState]:
    return st.builds(
        MailboxState,
        mailbox_id=ids,
        usn=longs,
        snapshot_usn=longs,
        updated_at=st.none() | moments,
        messages=st.dictionaries(ids, message_states(moments), max_size=6),
        events_applied=longs,
        duplicates=longs,
        stale=longs,
        snapshots_applied=longs,
        snapshot_taken_at=st.none() | moments,
    )


def fastavro_bytes(state: MailboxState) -> bytes:
    """The reference: fastavro's generic writer over the record, single-object framed."""
    schema = fastavro.parse_schema(codec.load_schema("mailbox_state.avsc"))
    out = io.BytesIO()
    out.write(wire.header(codec.fingerprint(MailboxStateRecord)))
    fastavro.schemaless_writer(out, schema, codec._state_to_avro(state.to_record()))
    return out.getvalue()


def writer() -> StateWriter:
    write = encoding.state_writer()
    assert write is not None, "mailbox_state.avsc changed: bring ingest.state.encoding up to date"
    return write


def message(message_id: str, **fields: object) -> MessageState:
    state = MessageState(**fields)  # type: ignore[arg-type]
    state.receive_time = state.receive_time or T0
    state.sender = state.sender or f"from {message_id}"
    return state


def mailbox(**fields: object) -> MailboxState:
    """A mailbox with an Inbox message, a deleted one keeping its changes, a tombstone."""
    kept = message(
        "m2",
        folder=Folder.DELETED,
        usn=9000,
        applied=frozenset({EventType.DELETED_MESSAGE_CREATE}),
        earlier=((8999, frozenset({EventType.DELETED_MESSAGE})),),
        floor_folder=Folder.INBOX,
        floor_read=True,
        floor_usn=8000,
    )
    messages = {
        "m1": message("m1", folder=Folder.INBOX, usn=7, applied=frozenset({EventType.NEW_MESSAGE})),
        "m2": kept,
        "m3": message("m3", usn=2**40, applied=frozenset({EventType.DELETED_MESSAGE_DELETE})),
    }
    values: dict[str, object] = {
        "mailbox_id": "abell",
        "usn": 9000,
        "updated_at": T0,
        "messages": messages,
        "events_applied": 12,
    }
    values.update(fields)
    return MailboxState(**values)  # type: ignore[arg-type]


class TestSameBytesAsFastavro:
    @given(mailbox_states())
    def test_any_state(self, state: MailboxState) -> None:
        assert writer()(state) == fastavro_bytes(state)

    @given(vendor_logs())
    def test_folded_vendor_logs(self, case: LogCase) -> None:
        """The states a fold makes: kept changes, floors, tombstones as the vendor's logs
        leave them."""
        projection = Projection()
        for record in case.records:
            projection.apply(record)
        for state in projection.mailboxes.values():
            assert writer()(state) == fastavro_bytes(state)

    @pytest.mark.parametrize(
        "state",
        [
            mailbox(),
            MailboxState("empty"),
            mailbox(mailbox_id="é" * 100, updated_at=None, snapshot_taken_at=T0),
            mailbox(updated_at=dt.datetime(1969, 7, 20, 20, 17, 40, 500)),  # naive, negative
            mailbox(usn=2**63 - 1, stale=-(2**63), duplicates=2**21, snapshot_usn=2**14),
            mailbox(messages={str(i): message(str(i), usn=i) for i in range(70)}),
        ],
        ids=["kept", "empty", "long-id", "naive-1969", "extremes", "70-messages"],
    )
    def test_examples(self, state: MailboxState) -> None:
        assert writer()(state) == fastavro_bytes(state)

    def test_naive_times_mean_utc_whatever_the_local_zone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        naive = dt.datetime(2026, 11, 25, 8, 30, 15)
        state = mailbox(updated_at=naive, messages={"m": message("m", receive_time=naive)})
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            assert (
                writer()(state)
                == fastavro_bytes(state)
                == writer()(
                    mailbox(
                        updated_at=naive.replace(tzinfo=dt.UTC),
                        messages={"m": message("m", receive_time=naive.replace(tzinfo=dt.UTC))},
                    )
                )
            )
        finally:
            monkeypatch.undo()
            time.tzset()

    def test_across_the_repeated_strings_cache_filling_and_emptying(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(encoding, "_REPEATED_MAX", 8)
        for i in [*range(40), *range(0, 40, 7)]:  # new values, then some seen before
            state = mailbox(messages={"m": message("m", msg_type=f"t{i}", priority=f"p{i % 3}")})
            assert writer()(state) == fastavro_bytes(state), i
            assert writer()(state) == fastavro_bytes(state), i  # from the cache
        assert len(encoding._REPEATED) <= 8


class TestEncodeState:
    @given(mailbox_states(whole_ms))
    def test_round_trip(self, state: MailboxState) -> None:
        assert decode_state(encode_state(state)).to_record() == state.to_record()

    @given(vendor_logs())
    def test_folded_states_round_trip_exactly(self, case: LogCase) -> None:
        projection = Projection()
        for record in case.records:
            projection.apply(record)
        for state in projection.mailboxes.values():
            assert decode_state(encode_state(state)) == state

    @given(mailbox_states())
    def test_state_value(self, state: MailboxState) -> None:
        value = state_value(state)
        record = state.to_record()
        assert value.value == fastavro_bytes(state)
        assert value.timestamp_ms == codec.timestamp_ms(record)

    def test_out_of_range_takes_the_reference_path(self) -> None:
        """fastavro raises for a number that is not an Avro long: so does the writer, and
        `encode_state` then says what the reference path says."""
        state = mailbox(usn=2**63)
        with pytest.raises(OverflowError):
            writer()(state)
        with pytest.raises(OverflowError):
            encode_state(state)

    def test_what_only_fastavro_writes_takes_the_reference_path(self) -> None:
        """A whole float for a long: fastavro writes it as the integer, the writer steps
        aside."""
        state = mailbox(usn=9000.0)
        with pytest.raises(encoding.UNWRITABLE):
            writer()(state)
        assert encode_state(state) == fastavro_bytes(state) == encode_state(mailbox())

    def test_bound_to_the_schema_it_was_written_for(self) -> None:
        assert encoding.writable(), "mailbox_state.avsc changed?"
        # off only when CUMI_NO_SPEEDUPS asks for the reference writer
        assert (store._FAST_WRITE is not None) is speedups.ENABLED
