"""Checkpoints (ingest.state.checkpoints) without a broker: when one is due, how states are cut
into chunks and read back, which checkpoint a bound may start from, and the fold-version pin."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import random
from pathlib import Path

import fastavro
import pytest
from fixtures.producing import fold, generate

from ingest import speedups
from ingest.errors import DecodeError
from ingest.eventlog import codec, reader, wire
from ingest.events import (
    CheckpointEntry,
    CheckpointManifest,
    EventType,
    Folder,
    KeptChanges,
    MailboxEvent,
    MailboxStateRecord,
    MessageChange,
    MessageStateRecord,
)
from ingest.state import checkpoints
from ingest.state.checkpoints import (
    FOLD_VERSION,
    CheckpointPolicy,
    Tracker,
    newest_before,
    newest_within_usn,
    prepare,
)
from ingest.state.projection import Projection
from ingest.state.store import decode_state, encode_state

UTC = dt.UTC


def manifest(next_offset: int, partition: int = 0) -> CheckpointManifest:
    return CheckpointManifest(
        events_topic="events",
        partition=partition,
        next_offset=next_offset,
        from_offset=0,
        first_time=None,
        last_time=None,
        fold_version=FOLD_VERSION,
        mailboxes=0,
        state_bytes=0,
        max_usn=-1,
        chunks=(),
        written_at=dt.datetime(2026, 1, 1, tzinfo=UTC),
    )


class TestPolicy:
    def test_due_after_enough_offsets(self) -> None:
        policy = CheckpointPolicy(records=100, interval_s=1e9)
        tracker = Tracker(from_offset=50, last_offset=50, last_written=0.0)
        assert not policy.due(tracker, 149, now=1.0)
        assert policy.due(tracker, 150, now=1.0)

    def test_due_after_the_interval_only_if_something_was_folded(self) -> None:
        policy = CheckpointPolicy(records=10**9, interval_s=60)
        tracker = Tracker(from_offset=10, last_offset=10, last_written=100.0)
        assert not policy.due(tracker, 11, now=159.0)
        assert policy.due(tracker, 11, now=160.0)
        assert not policy.due(tracker, 10, now=1e6)  # nothing new since the last one

    def test_a_resumed_partition_counts_from_where_it_resumed(self) -> None:
        policy = CheckpointPolicy(records=100, interval_s=1e9)
        tracker = Tracker.resumed(1000, None)
        assert not policy.due(tracker, 1099, now=tracker.last_written)
        assert policy.due(tracker, 1100, now=tracker.last_written)

    def test_zero_records_disables(self) -> None:
        policy = CheckpointPolicy(records=0, interval_s=1)
        assert not policy.enabled
        assert not policy.due(Tracker(from_offset=0, last_written=0.0), 10**6, now=1e9)

    def test_resumed_from_a_manifest(self) -> None:
        tracker = Tracker.resumed(500, manifest(400))
        assert (tracker.last_offset, tracker.from_offset) == (400, 500)
        assert tracker.last_written == dt.datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        assert Tracker.resumed(300, manifest(400)).last_offset == -1  # not ours to trust

    def test_saw_keeps_the_time_range(self) -> None:
        tracker = Tracker(from_offset=0)
        tracker.saw(2000, 3000)
        tracker.saw(1000, 2500)
        tracker.saw(-1, -1)  # records without a timestamp
        assert (tracker.first_ms, tracker.last_ms) == (1000, 3000)
        tracker.written(manifest(10))
        assert (tracker.first_ms, tracker.last_ms, tracker.from_offset) == (None, None, 10)


@pytest.fixture(scope="module")
def projection() -> Projection:
    return fold(generate(events=3000, mailboxes=40, seed=5).records)


class TestChunks:
    def test_states_are_cut_in_id_order_within_the_budget(self, projection: Projection) -> None:
        budget = 4096
        pending = asyncio.run(
            prepare(
                topic="ckpt",
                events_topic="events",
                partition=3,
                events_partitions=12,
                next_offset=777,
                tracker=Tracker(from_offset=700, first_ms=1, last_ms=2),
                states=projection.mailboxes,
                chunk_bytes=budget,
            )
        )
        assert len(pending.chunks) > 3
        assert [c.index for c in pending.chunks] == list(range(len(pending.chunks)))
        ids = [e.mailbox_id for c in pending.chunks for e in c.entries]
        assert ids == sorted(projection.mailboxes)
        for chunk in pending.chunks:
            sizes = [len(e.state) for e in chunk.entries]
            assert sum(sizes) <= budget or len(sizes) == 1
            assert (chunk.partition, chunk.next_offset) == (3, 777)
        for entry in (e for c in pending.chunks for e in c.entries):
            state = projection.mailboxes[entry.mailbox_id]
            assert entry.usn == state.usn
            assert decode_state(entry.state).to_record() == state.to_record()

    def test_manifest_points_at_every_chunk(self, projection: Projection) -> None:
        pending = asyncio.run(
            prepare(
                topic="ckpt",
                events_topic="events",
                partition=0,
                events_partitions=12,
                next_offset=10,
                tracker=Tracker(from_offset=4, first_ms=1_000, last_ms=2_000),
                states=projection.mailboxes,
                chunk_bytes=8192,
            )
        )
        refs = [checkpoints._ref(chunk, 100 + i, 1) for i, chunk in enumerate(pending.chunks)]
        made = pending.manifest(refs)
        assert made.mailboxes == len(projection.mailboxes)
        assert made.state_bytes == pending.size
        assert made.max_usn == max(s.usn for s in projection.mailboxes.values())
        assert (made.from_offset, made.next_offset, made.fold_version) == (4, 10, FOLD_VERSION)
        assert made.first_time == dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
        assert pending.timestamp_ms == made.written_at.timestamp() * 1000
        assert codec.decode(codec.encode(made)) == made
        for chunk in pending.chunks:
            assert codec.decode(codec.encode(chunk)) == chunk

    def test_an_empty_partition_has_one_empty_chunk(self) -> None:
        pending = asyncio.run(
            prepare(
                topic="t",
                events_topic="e",
                partition=0,
                events_partitions=1,
                next_offset=5,
                tracker=Tracker(from_offset=0),
                states={},
            )
        )
        assert [c.entries for c in pending.chunks] == [()]


class TestChoosing:
    def test_newest_at_or_before_the_stop(self) -> None:
        listed = [manifest(o) for o in (100, 200, 300)]
        assert newest_before(listed, 99) is None
        assert newest_before(listed, 100) is listed[0]
        assert newest_before(listed, 299) is listed[1]
        assert newest_before(listed, 10**9) is listed[2]
        assert newest_before([], 10) is None

    @pytest.mark.parametrize("usn", [-1, 0, 4, 5, 6, 9, 10, 11, 100])
    def test_newest_with_the_mailbox_at_or_below_a_usn(self, usn: int) -> None:
        """The mailbox is absent from the first checkpoint, then its USN grows."""
        listed = [manifest(o) for o in (10, 20, 30, 40, 50)]
        usns = {10: None, 20: 5, 30: 5, 40: 10, 50: 12}
        fetched: list[int] = []

        async def entry(m: CheckpointManifest) -> CheckpointEntry | None:
            fetched.append(m.next_offset)
            found = usns[m.next_offset]
            return None if found is None else CheckpointEntry("m", found, b"")

        chosen = asyncio.run(newest_within_usn(listed, 45, usn, entry))
        ok = [o for o in (10, 20, 30, 40) if usns[o] is None or usns[o] <= usn]  # type: ignore[operator]
        assert (chosen.next_offset if chosen else None) == max(ok)
        assert len(fetched) <= 3  # a binary search, not a scan


class TestFoldFacts:
    """What choosing a checkpoint by USN relies on: a mailbox's USN is the highest USN among
    every record of it folded (applied, duplicate or stale alike)."""

    def test_mailbox_usn_is_the_highest_record_usn(self) -> None:
        stream = generate(events=4000, mailboxes=30, seed=9)
        projection, highest = Projection(), dict[str, int]()
        for record in stream.records:
            projection.apply(record)
            highest[record.mailbox_id] = max(highest.get(record.mailbox_id, 0), record.usn)
            assert projection.mailboxes[record.mailbox_id].usn == highest[record.mailbox_id]
        assert any(type(r) is not MailboxEvent for r in stream.records)  # snapshots too

    def test_folding_on_from_a_decoded_checkpoint_equals_folding_through(self) -> None:
        records = generate(events=3000, mailboxes=20, seed=3).records
        for cut in (1, 700, 1500, 2999):
            whole = fold(records)
            half = fold(records[:cut])
            resumed = Projection()
            for mailbox_id, state in half.mailboxes.items():
                resumed.mailboxes[mailbox_id] = decode_state(encode_state(state))
            for record in itertools.islice(records, cut, None):
                resumed.apply(record)
            assert {m: s.to_record() for m, s in resumed.mailboxes.items()} == {
                m: s.to_record() for m, s in whole.mailboxes.items()
            }


PINNED_FOLD = {2: "cf36a8b9b3b0598e"}
"""FOLD_VERSION → the hash of the fold's code (ingest/state/projection.py without docstrings)."""


def fold_code_hash() -> str:
    path = Path(__file__).resolve().parents[2] / "ingest" / "state" / "projection.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [
                n
                for n in body
                if not (
                    isinstance(n, ast.Expr)
                    and isinstance(n.value, ast.Constant)
                    and isinstance(n.value.value, str)
                )
            ]
            setattr(node, "body", kept or [ast.Pass()])  # noqa: B010 - any node with a body
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def test_fold_version_is_pinned_to_the_fold_code() -> None:
    """The fold changed: checkpoints written by the old code hold states the new code might not
    compute. If what it computes changed, bump checkpoints.FOLD_VERSION (old checkpoints are then
    ignored); if not (a refactoring), pin the new hash under the same version."""
    assert PINNED_FOLD.get(FOLD_VERSION) == fold_code_hash(), (
        f"ingest/state/projection.py changed (hash {fold_code_hash()}): see this test's doc"
    )


V2_STATE = Path(__file__).resolve().parents[2] / "schemas" / "history" / "mailbox_state.v2.avsc"


def v2_value(record: MailboxStateRecord) -> bytes:
    """`record` as a writer of state schema v2 wrote it (no `kept`, no `snapshot_taken_at`)."""
    schema = json.loads(V2_STATE.read_text(encoding="utf-8"))
    datum = codec._state_to_avro(record)
    del datum["snapshot_taken_at"]
    for entry in datum["messages"]:
        del entry["kept"]
    out = io.BytesIO(wire.header(wire.FAST_STATE_SCHEMA_V2))
    out.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), datum)
    return out.getvalue()


def assert_read_alike(value: bytes, v2: bool = False) -> MailboxStateRecord:
    """The straight-line reader itself (no fallback to the codec) and the public entry point both
    give what `codec.decode` gives."""
    expected = codec.decode(value)
    assert isinstance(expected, MailboxStateRecord)
    fast = reader._read_state_v2 if v2 else reader._read_state
    assert fast(value, wire.HEADER_SIZE) == expected
    assert reader.decode_state_record(value) == expected
    return expected


def every_branch(i: int) -> MessageStateRecord:
    """Message `i` of a state that takes every symbol and optional branch over i = 0..11."""
    kept = None
    if i % 3:  # no kept, kept with no earlier change, kept with several
        earlier = tuple(
            MessageChange(usn=u - 2**35, applied=tuple(list(EventType)[u % 9 : u % 9 + 2]))
            for u in range((i % 3 - 1) * (i + 1))
        )
        kept = KeptChanges(earlier, list(Folder)[i // 3 % 3], i % 4 < 2, -1 if i % 2 else 2**40)
    return MessageStateRecord(
        message_id=f"id-{i}" * (1 + 10 * (i == 5)),  # id-5: a length in two bytes
        folder=list(Folder)[i % 3],
        read=i % 2 == 0,
        usn=i,
        applied=tuple(list(EventType)[: i % 10]),
        base_folder=list(Folder)[(i + 1) % 3],
        base_read=i % 3 == 0,
        base_read_usn=-1 if i % 2 else i,
        caller_ani=None if i % 2 else "+1555",
        sender="s" * (i * 10),
        msg_type=None,
        priority="Urgent" if i % 3 else None,
        receive_time=None if i % 2 else dt.datetime(2030, 1, 1, tzinfo=UTC),
        receive_time_raw=None if i % 2 else "1/1/2030",
        kept=kept,
    )


class TestFastStateReader:
    """`reader.decode_state_record` (checkpoints decode thousands of states) equals
    `codec.decode` on every folded state, v3 and v2, and leaves what it cannot read to the
    codec."""

    def test_in_use_for_v3_and_v2(self) -> None:
        assert reader._FAST_STATES == speedups.ENABLED
        expected = (
            {wire.FAST_STATE_SCHEMA, wire.FAST_STATE_SCHEMA_V2} if speedups.ENABLED else set()
        )
        assert set(reader._FAST_STATE) == expected

    def test_same_as_the_codec(self, projection: Projection) -> None:
        decoded = [assert_read_alike(encode_state(s)) for s in projection.mailboxes.values()]
        messages = [m for state in decoded for m in state.messages]
        assert any(m.receive_time for m in messages)
        assert any(m.kept is None for m in messages)
        assert any(m.kept and m.kept.earlier for m in messages)
        assert any(s.snapshot_taken_at for s in decoded)
        assert any(s.snapshot_taken_at is None for s in decoded)

    def test_late_events_in_any_order(self) -> None:
        """The order-independent fold of a shuffled log: events arrive late and are kept in
        their place (`kept` with earlier changes below the message's usn)."""
        records = list(generate(events=1500, mailboxes=10, seed=8).records)
        random.Random(8).shuffle(records)
        decoded = [assert_read_alike(encode_state(s)) for s in fold(records).mailboxes.values()]
        kept = [m.kept for state in decoded for m in state.messages if m.kept]
        assert any(len(k.earlier) > 1 for k in kept)
        assert {k.floor_folder for k in kept} >= {Folder.INBOX, Folder.GONE}

    @pytest.mark.parametrize("taken_at", [None, dt.datetime(2029, 5, 4, 3, 2, 1, tzinfo=UTC)])
    def test_every_symbol_and_optional_branch(self, taken_at: dt.datetime | None) -> None:
        record = MailboxStateRecord(
            mailbox_id="m" * 70,  # a length in two bytes
            usn=2**40,
            snapshot_usn=-1 if taken_at is None else 7,
            updated_at=taken_at,
            messages=tuple(every_branch(i) for i in range(12)),
            snapshots_applied=3,
            snapshot_taken_at=taken_at,
        )
        value = codec.encode(record)
        assert assert_read_alike(value) == record
        kept = [m.kept for m in record.messages if m.kept]
        assert {k.floor_folder for k in kept} == set(Folder)
        assert {k.floor_read for k in kept} == {True, False}
        assert min(len(k.earlier) for k in kept) == 0 < max(len(k.earlier) for k in kept)
        assert {t for k in kept for c in k.earlier for t in c.applied} == set(EventType)

    def test_v2_records(self, projection: Projection) -> None:
        """States written before v3 are read fast too, as the codec resolves them: no kept
        changes, no snapshot_taken_at; v2's base_read_usn as written."""
        states = [s.to_record() for s in projection.mailboxes.values()]
        states.append(
            MailboxStateRecord("m" * 70, 11, tuple(every_branch(i) for i in range(12)), 3)
        )
        for state in states:
            value = v2_value(state)
            expected = dataclasses.replace(
                state,
                messages=tuple(dataclasses.replace(m, kept=None) for m in state.messages),
                snapshot_taken_at=None,
            )
            assert assert_read_alike(value, v2=True) == expected

    def test_the_layouts_differ(self, projection: Projection) -> None:
        """Neither reader takes the other version's body (so each test above tests its own)."""
        state = next(s for s in projection.mailboxes.values() if s.to_record().messages)
        v3, v2 = encode_state(state), v2_value(state.to_record())
        with pytest.raises((ValueError, IndexError)):
            reader._read_state_v2(v3, wire.HEADER_SIZE)
        with pytest.raises((ValueError, IndexError)):
            reader._read_state(v2, wire.HEADER_SIZE)

    def test_older_versions_and_damage_go_to_the_codec(self, projection: Projection) -> None:
        value = encode_state(next(iter(projection.mailboxes.values())))
        for broken in (value[:-1], value + b"\x00", value[:20]):
            with pytest.raises(DecodeError):
                reader.decode_state_record(broken)
        with pytest.raises(DecodeError, match="not a MailboxState"):
            reader.decode_state_record(codec.encode(manifest(1)))
