"""The cyclic garbage collector's setting for the streaming services (worker, projector).

CPython's default first-generation threshold (700) starts a collection every 700 container
objects allocated and not yet freed. An ingest worker decodes a Bayeux payload of up to 1,000
events into ≈ 3,000 containers at once and keeps them while the payload is processed, so the
default collected many times per payload, each time walking the same live payloads (and
promoting them into the older generations, whose passes then walked them again): 3 to 4 µs per
event on the reference machine, ≈ 10 % of the worker's CPU, and more with a larger heap.
Almost nothing on this path forms reference cycles; reference counting frees it all.

At 50,000 the collector still runs, on the same rule, but only once that many containers have
piled up net of those freed — a bound on the cyclic garbage that can wait for it (tens of MB at
worst), not a leak. The older generations keep their default ratios. docs/benchmarks.md has the
measurement. A speedup (ingest.speedups): with CUMI_NO_SPEEDUPS=1 the default thresholds stay.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from ingest import speedups

STREAMING_GEN0_THRESHOLD = 50_000


@contextlib.contextmanager
def streaming_collector(gen0_threshold: int = STREAMING_GEN0_THRESHOLD) -> Iterator[None]:
    """Raise the first generation's threshold to at least `gen0_threshold` while inside; restore
    the previous thresholds on the way out (tests and embedding callers share the process)."""
    before = gc.get_threshold()
    if speedups.ENABLED:
        gc.set_threshold(max(before[0], gen0_threshold), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class CatchUpFreezer:
    """Spares a growing state from the collector's full passes while a consumer catches up.

    Catching up on a long log (a rebuild from offset 0) grows the folded state by millions of
    objects, and every full collection walks all of them to find nothing: `ingest replay` lost a
    fifth of its CPU that way. While `catching_up`, everything alive after a batch is frozen
    (`gc.freeze`: left out of collections, still freed by reference counting); once caught up it
    is unfrozen, so cyclic garbage made meanwhile is collected as usual. Nothing is done if the
    process already uses the permanent generation (not ours to empty), has no collector running,
    or runs without speedups (CUMI_NO_SPEEDUPS)."""

    def __init__(self) -> None:
        self._frozen = False

    def after_batch(self, catching_up: bool) -> None:
        if catching_up:
            if self._frozen or (speedups.ENABLED and gc.isenabled() and gc.get_freeze_count() == 0):
                gc.freeze()
                self._frozen = True
        else:
            self.release()

    def release(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
