"""Replay in several processes, the parts that need no broker: `--workers`, and the states the
worker processes send back (packed as tuples, pickled, unpacked into the parent's projection)."""

from __future__ import annotations

import argparse
import pickle

import pytest
from fixtures.producing import fold, generate

from ingest.commands.replay import add_arguments
from ingest.state.packing import pack_states, unpack_states
from ingest.state.projection import Projection
from ingest.state.replay import available_cpus


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingest replay")
    add_arguments(parser)
    return parser.parse_args(["--all", *argv])


class TestWorkersArgument:
    def test_default_is_auto(self) -> None:
        assert parse().workers is None

    @pytest.mark.parametrize(("text", "workers"), [("auto", None), ("AUTO", None), ("3", 3)])
    def test_values(self, text: str, workers: int | None) -> None:
        assert parse("--workers", text).workers == workers

    @pytest.mark.parametrize("text", ["0", "-2", "many"])
    def test_rejected(self, text: str, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            parse("--workers", text)
        assert "--workers" in capsys.readouterr().err

    def test_cpus(self) -> None:
        assert available_cpus() >= 1


class TestStatesFromWorkers:
    def test_round_trip_keeps_every_field(self) -> None:
        stream = generate(events=3000, mailboxes=20, seed=4)
        halves = fold(stream.records[::2]), fold(stream.records[1::2])
        merged = Projection()
        for half in halves:
            unpack_states(pickle.loads(pickle.dumps(pack_states(half))), merged)
        expected = {m: s for half in halves for m, s in half.mailboxes.items()}
        assert set(merged.mailboxes) == set(expected)
        for mailbox_id, state in expected.items():
            assert merged.mailboxes[mailbox_id] == state  # every field, messages included
            assert merged.mailboxes[mailbox_id].to_record() == state.to_record()

    def test_unpacked_state_folds_on(self) -> None:
        """The parent's copy is a working state, not a snapshot of one: more events apply."""
        stream = generate(events=3000, mailboxes=20, seed=4)
        cut = len(stream.records) // 2
        merged = Projection()
        unpack_states(pickle.loads(pickle.dumps(pack_states(fold(stream.records[:cut])))), merged)
        for record in stream.records[cut:]:
            merged.apply(record)
        assert merged.to_json(detail=True) == fold(stream.records).to_json(detail=True)
