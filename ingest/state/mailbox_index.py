"""The owned mailboxes in id order, kept up to date without sorting them again: the read API's
listing pages through it (`GET /mailboxes?after=…`) at O(log n + page) instead of sorting every
mailbox for every page.

It follows the projector's partitions lazily, on each use, by what cannot change unseen: a
partition's `Projection` only ever gains mailboxes (the fold never forgets one), and Python dicts
keep insertion order, so the mailboxes added since the last use are the last ones of its dict,
found from its end (`reversed`) at the cost of the new ones only. A partition gained, lost or
restored into a new `Projection` (a rebalance) rebuilds the index: a sort, once per rebalance.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Mapping
from itertools import islice

from ingest.state.projection import Projection

_INSERT_AT_MOST = 64
"""New ids inserted one by one (a memmove each); more are appended and merged by one sort, which
finds the two sorted runs and merges them in linear time."""


class MailboxIndex:
    """Mailbox ids of the given partitions, sorted, with the partition of each."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._partition_of: dict[str, int] = {}
        self._followed: dict[int, tuple[Projection, int]] = {}
        """Partition → the projection indexed and how many of its mailboxes are."""

    def __len__(self) -> int:
        return len(self._ids)

    def sync(self, projections: Mapping[int, Projection]) -> None:
        """Catch up with `projections` (partition → its projection, as the projector has them)."""
        followed = self._followed
        if followed.keys() != projections.keys() or any(
            followed[n][0] is not p or len(p.mailboxes) < followed[n][1]
            for n, p in projections.items()
        ):
            self._rebuild(projections)
            return
        new: list[str] = []
        for number, projection in projections.items():
            known, count = followed[number][1], len(projection.mailboxes)
            if count > known:
                added = list(islice(reversed(projection.mailboxes), count - known))
                self._partition_of.update(dict.fromkeys(added, number))
                new += added
                followed[number] = (projection, count)
        if len(new) > _INSERT_AT_MOST:
            self._ids += new
            self._ids.sort()
        else:
            for mailbox_id in new:
                insort(self._ids, mailbox_id)

    def page(self, after: str, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` (partition, id) of the mailboxes sorted after `after` ("": the first)."""
        start = bisect_right(self._ids, after)
        return [(self._partition_of[m], m) for m in self._ids[start : start + limit]]

    def _rebuild(self, projections: Mapping[int, Projection]) -> None:
        self._partition_of = {
            mailbox_id: number
            for number, projection in projections.items()
            for mailbox_id in projection.mailboxes
        }
        self._ids = sorted(self._partition_of)
        self._followed = {n: (p, len(p.mailboxes)) for n, p in projections.items()}
