"""Mailbox states across process boundaries: `ingest replay`'s worker processes and the
projector's catch-up workers (ingest.state.catchup) hand their folded states back packed.

Packed states are plain tuples of the dataclasses' fields: pickle handles those in C, where
`MailboxStateRecord`s (or the objects themselves) cost several times more to build, pickle and
rebuild — seconds for a million records' worth of state, mostly in the parent, where nothing runs
in parallel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from operator import attrgetter
from typing import Any

from ingest.state.projection import MailboxState, MessageState, Projection

_STATE_FIELDS = tuple(f.name for f in fields(MailboxState) if f.name != "messages")
_MESSAGE_FIELDS = tuple(f.name for f in fields(MessageState))
PackedState = tuple[tuple[Any, ...], list[tuple[str, tuple[Any, ...]]]]


def pack_states(projection: Projection) -> list[PackedState]:
    """Every state of `projection`, picklable and cheap to pickle (`unpack_states` reverses)."""
    state_fields, message_fields = attrgetter(*_STATE_FIELDS), attrgetter(*_MESSAGE_FIELDS)
    return [
        (state_fields(state), [(mid, message_fields(m)) for mid, m in state.messages.items()])
        for state in projection.mailboxes.values()
    ]


def unpack_states(packed: Iterable[PackedState], into: Projection) -> None:
    for values, messages in packed:
        state = MailboxState(**dict(zip(_STATE_FIELDS, values, strict=True)))
        state.messages = {mid: MessageState(*message) for mid, message in messages}
        into.mailboxes[state.mailbox_id] = state
