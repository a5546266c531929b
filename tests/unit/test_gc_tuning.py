"""The streaming services' collector threshold: raised inside, restored after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ingest import speedups
from ingest.ops.gc_tuning import STREAMING_GEN0_THRESHOLD, streaming_collector


@pytest.fixture(autouse=True)
def _thresholds_kept() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


class TestStreamingCollector:
    """`streaming_collector` raises the first generation's threshold only, and only upwards."""

    def test_raises_the_first_generation_and_keeps_the_older_ones(self) -> None:
        gc.set_threshold(700, 10, 10)
        with streaming_collector():
            raised = STREAMING_GEN0_THRESHOLD if speedups.ENABLED else 700
            assert gc.get_threshold() == (raised, 10, 10)
        assert gc.get_threshold() == (700, 10, 10)

    def test_never_lowers_a_higher_threshold(self) -> None:
        gc.set_threshold(200_000, 5, 7)
        with streaming_collector():
            assert gc.get_threshold() == (200_000, 5, 7)

    def test_restores_after_an_error(self) -> None:
        gc.set_threshold(700, 10, 10)
        with pytest.raises(RuntimeError), streaming_collector(1_000):
            assert gc.get_threshold()[0] == (1_000 if speedups.ENABLED else 700)
            raise RuntimeError("service failed")
        assert gc.get_threshold() == (700, 10, 10)

    def test_collections_become_rare_for_a_payload_sized_burst(self) -> None:
        """3,000 live containers per payload (what a worker holds while processing one): the
        default threshold collects several times per payload, the streaming one not at all."""
        counts = []
        for threshold in (700, STREAMING_GEN0_THRESHOLD):
            gc.collect()
            gc.set_threshold(threshold, 10, 10)
            before = gc.get_stats()[0]["collections"]
            for _ in range(10):
                payload: list[object] = [{"data": {"MessageInfo": [{}]}} for _ in range(1_000)]
                del payload
            counts.append(gc.get_stats()[0]["collections"] - before)
        assert counts[0] >= 10
        assert counts[1] == 0
