"""The read API's sorted mailbox index equals a fresh sort of every owned mailbox, whatever the
projector did in between (mailboxes appearing, partitions gained, lost or restored)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.state.mailbox_index import MailboxIndex
from ingest.state.projection import MailboxState, Projection

Step = tuple[str, int, list[str]]
"""("add", partition, ids) | ("restore", partition, ids) | ("drop", partition, [])."""

steps = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "restore", "drop"]),
        st.integers(0, 3),
        st.lists(st.text("abcxyz0", min_size=1, max_size=4), max_size=80),
    ),
    max_size=25,
)


def walk(index: MailboxIndex, limit: int) -> list[str]:
    listed: list[str] = []
    while True:
        page = index.page(listed[-1] if listed else "", limit)
        listed += [mailbox_id for _, mailbox_id in page]
        if len(page) < limit:
            return listed


class TestMailboxIndex:
    """Synced after every step, its pages walk exactly the sorted owned mailboxes."""

    @settings(max_examples=150)
    @given(steps, st.integers(1, 7))
    def test_pages_equal_a_fresh_sort(self, plan: list[Step], limit: int) -> None:
        projections: dict[int, Projection] = {}
        index = MailboxIndex()
        for action, number, ids in plan:
            if action == "drop":
                projections.pop(number, None)
            else:
                if action == "restore" or number not in projections:
                    projections[number] = Projection()
                mailboxes = projections[number].mailboxes
                for mailbox_id in ids:  # one id lives in one partition (as partition_for says)
                    if not any(mailbox_id in p.mailboxes for p in projections.values()):
                        mailboxes[mailbox_id] = MailboxState(mailbox_id)
            index.sync(projections)
            owned = {m: n for n, p in projections.items() for m in p.mailboxes}
            assert walk(index, limit) == sorted(owned)
            assert len(index) == len(owned)
            assert all(owned[m] == n for n, m in index.page("", len(owned) + 1))

    def test_many_new_mailboxes_at_once_are_merged(self) -> None:
        projection = Projection()
        index = MailboxIndex()
        index.sync({0: projection})
        for i in range(1000, 0, -1):
            projection.mailboxes[f"m{i:04d}"] = MailboxState(f"m{i:04d}")
        index.sync({0: projection})
        assert [m for _, m in index.page("m0500", 3)] == ["m0501", "m0502", "m0503"]
