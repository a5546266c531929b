"""Subscribe requests split by encoded size (the reference server's 64 KiB WebSocket limit)."""

from __future__ import annotations

import json
import uuid

from ingest.cumi.session import batches_by_size, channel_for


def subscribes(count: int) -> list[dict[str, str]]:
    return [
        {
            "channel": "/meta/subscribe",
            "clientId": "31w8p3kfn2yxd1k4t0q1m2ljhb5c",  # a CometD 9 clientId's length
            "subscription": channel_for(str(uuid.uuid4())),
            "id": "0" * 10,
        }
        for _ in range(count)
    ]


class TestBatchesBySize:
    """Each part encodes as aiocometd-ng sends it (json.dumps of the list) within the limit."""

    def test_parts_fit_keep_order_and_lose_nothing(self) -> None:
        messages = subscribes(1_000)
        parts = batches_by_size(messages, 65_536)
        assert [m for part in parts for m in part] == messages
        assert all(len(json.dumps(part).encode()) <= 65_536 for part in parts)
        # not over-cautious: the reference server took 412 such messages (with short ids) in one
        # frame; sized with ten-digit ids 390 fit
        assert len(parts[0]) >= 385
        assert len(parts) == 3

    def test_exact_fit(self) -> None:
        messages = subscribes(10)
        size = len(json.dumps(messages).encode())
        assert batches_by_size(messages, size) == [messages]
        assert len(batches_by_size(messages, size - 1)) == 2

    def test_an_oversized_message_goes_alone(self) -> None:
        messages = subscribes(3)
        assert batches_by_size(messages, 10) == [[m] for m in messages]
        assert batches_by_size([], 10) == []
