"""The fold alone, in process (no Kafka): records/s of `Projection.apply`, and what state costs.

The stream is the replay benchmark's (the test suite's generator: the simulator's scenario
engine through the worker's own normalizer, with repeats, late repeats and gap-repair snapshots),
decoded once up front, so only the fold is timed:

- **in order**: the records in log order — the projector's and `ingest replay`'s hot path;
- **reordered**: the same records with a share of them (`--late`) moved a few places later within
  their mailbox, as when a stream arrives out of USN order — the late-event path;
- **state records**: `encode_state` of every mailbox (what a projector commit writes: the
  straight-line writer, ingest.state.encoding), the reference `to_record()` + `codec.encode`
  (fastavro) it replaces, and `codec.decode` + `Projection.load` of them (its restore), with
  their total size; `decode_state` of every encoded state (what a checkpoint read does: the
  direct reader, ingest.state.decoding) and the reference
  `MailboxState.from_record(decode_state_record(value))` it replaces;
- **memory**: bytes the in-order fold's state holds (tracemalloc, after the fold).

It also says whether the reordered fold gives the in-order state (counters aside): a sanity
check, not a timing. Rates are per second of this process's CPU time, best of `--rounds`, and
the median. Measures, never asserts. `python -m bench.bench_fold [--records N] [--rounds N]`;
results in bench/results/fold.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import machine, record
from ingest import speedups
from ingest.eventlog import codec
from ingest.eventlog.reader import decode_state_record
from ingest.events import LogRecord, MailboxStateRecord
from ingest.state.projection import MailboxState, Projection
from ingest.state.store import decode_state, encode_state

# the test suite's stream generator (tests/ is not a package on the path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.producing import generate


def reordered(
    records: Sequence[LogRecord], share: float, seed: int = 5
) -> tuple[list[LogRecord], int]:
    """`records` with about `share` of them each moved 1 to 8 places later among its mailbox's
    records (a mailbox's records keep their relative order otherwise); and how many moved."""
    rng = random.Random(seed)
    moved = 0
    by_mailbox: dict[str, list[LogRecord]] = {}
    for item in records:
        by_mailbox.setdefault(item.mailbox_id, []).append(item)
    for items in by_mailbox.values():
        for index in range(len(items) - 2, -1, -1):
            if rng.random() < share:
                moved += 1
                item = items.pop(index)
                items.insert(min(len(items), index + rng.randint(1, 8)), item)
    # interleave the mailboxes again in the original pattern of mailbox ids
    queues = {mailbox: iter(items) for mailbox, items in by_mailbox.items()}
    return [next(queues[item.mailbox_id]) for item in records], moved


def fold(records: Sequence[LogRecord]) -> Projection:
    projection = Projection()
    apply = projection.apply
    for item in records:
        apply(item)
    return projection


def rates(work: Callable[[], object], count: int, rounds: int) -> dict[str, float]:
    """Items per CPU second over `rounds` runs of `work`: best and median; µs per item (best)."""
    per_second = []
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        work()
        per_second.append(count / (time.process_time() - started))
    best = max(per_second)
    return {
        "cpu_best_per_s": round(best),
        "cpu_median_per_s": round(statistics.median(per_second)),
        "us_per_item": round(1e6 / best, 3),
    }


def held_bytes(records: Sequence[LogRecord]) -> int:
    """Bytes allocated by folding `records` and still held afterwards (the state)."""
    gc.collect()
    tracemalloc.start()
    try:
        projection = fold(records)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del projection
    return held


def without_counters(projection: Projection) -> dict[str, Any]:
    states = projection.to_json(detail=True)
    for state in states.values():
        state.pop("counters")
    return states


def measure(records: list[LogRecord], rounds: int, late: float) -> dict[str, Any]:
    shuffled, moved = reordered(records, late)
    in_order = fold(records)
    states = [state.to_record() for state in in_order.mailboxes.values()]
    encoded = [codec.encode(state) for state in states]
    messages = sum(len(state.messages) for state in states)

    def write() -> None:
        for state in in_order.mailboxes.values():
            encode_state(state)

    def write_record() -> None:
        for state in in_order.mailboxes.values():
            codec.encode(state.to_record())

    def restore() -> None:
        restored = Projection()
        for data in encoded:
            decoded = codec.decode(data)
            assert isinstance(decoded, MailboxStateRecord)
            restored.load(decoded)

    def read() -> None:
        for data in encoded:
            decode_state(data)

    def read_record() -> None:
        for data in encoded:
            MailboxState.from_record(decode_state_record(data))

    gc.freeze()  # the prepared inputs are the benchmark's, not the fold's
    try:
        result: dict[str, Any] = {
            "records": len(records),
            "mailboxes": len(states),
            "messages": messages,
            "reordered_records": moved,
            "in_order": rates(lambda: fold(records), len(records), rounds),
            "reordered": rates(lambda: fold(shuffled), len(records), rounds),
            "state_write": rates(write, len(states), rounds),
            "state_write_record": rates(write_record, len(states), rounds),
            "state_restore": rates(restore, len(states), rounds),
            "state_read": rates(read, len(states), rounds),
            "state_read_record": rates(read_record, len(states), rounds),
            "state_bytes": sum(len(data) for data in encoded),
            "held_bytes": held_bytes(records),
            "reordered_equals_in_order": without_counters(fold(shuffled))
            == without_counters(in_order),
        }
    finally:
        gc.unfreeze()
    result["state_bytes_per_message"] = round(result["state_bytes"] / max(1, messages), 1)
    result["held_bytes_per_message"] = round(result["held_bytes"] / max(1, messages), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records in the stream")
    parser.add_argument("--mailboxes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--late", type=float, default=0.05, help="share of records moved later")
    args = parser.parse_args(argv)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}")
    print(f"speedups: {speedups.ENABLED}; load average {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    stream = generate(events=args.records, mailboxes=args.mailboxes, seed=17)
    print(f"generated {len(stream.records):,} records in {time.perf_counter() - started:.0f} s")
    result = measure(stream.records, args.rounds, args.late)
    result["speedups"] = speedups.ENABLED
    result["load_average_after"] = os.getloadavg()
    names = ("in_order", "reordered", "state_write", "state_write_record", "state_restore")
    for name in (*names, "state_read", "state_read_record"):
        figures = result[name]
        print(
            f"fold {name:18s} per CPU s: {figures['cpu_best_per_s']:>9,} best "
            f"{figures['cpu_median_per_s']:>9,} median ({figures['us_per_item']} µs each)"
        )
    print(
        f"state: {result['mailboxes']:,} mailboxes, {result['messages']:,} messages, "
        f"{result['state_bytes']:,} bytes encoded ({result['state_bytes_per_message']} per "
        f"message), {result['held_bytes']:,} bytes held ({result['held_bytes_per_message']} "
        f"per message); reordered ({result['reordered_records']:,} records moved) folds to "
        f"the in-order state: {result['reordered_equals_in_order']}"
    )
    print(f"results in {record('fold', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
