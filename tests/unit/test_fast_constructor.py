"""events.fast_constructor: the same records as the dataclass's own __init__, built faster."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

import pytest

from ingest import speedups

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from ingest.events import (
    EventType,
    Folder,
    KeptChanges,
    MailboxEvent,
    MessageChange,
    MessageInfo,
    SnapshotMessage,
    UnparsedField,
)
from ingest.speedups import fast_constructor

T0 = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
INFO = MessageInfo("m1", "+1408", None, "Voice", "Normal-Priority", T0, "03:04:05 AM 01/02/2024")
CASES: list[tuple[type, tuple[object, ...]]] = [
    (MessageInfo, dataclasses.astuple(INFO)),
    (SnapshotMessage, ("m2", True, T0, "s", None, "Urgent-Priority", "Fax")),
    (
        MailboxEvent,
        (
            "abell",
            7,
            EventType.NEW_MESSAGE,
            T0,
            "raw",
            "sub",
            (INFO,),
            T0,
            None,
            "cuc1",
            (UnparsedField("MessageInfo[0].ReceiveTime", "N/A"),),
        ),
    ),
    (MessageChange, (3, (EventType.DELETED_MESSAGE, EventType.DELETED_MESSAGE_CREATE))),
    (KeptChanges, ((MessageChange(2, (EventType.SAVED_MESSAGE,)),), Folder.INBOX, True, 1)),
]


@pytest.mark.parametrize(("cls", "values"), CASES, ids=[c[0].__name__ for c in CASES])
def test_same_record_as_the_class_builds(
    cls: type[DataclassInstance], values: tuple[object, ...]
) -> None:
    fast, slow = fast_constructor(cls)(*values), cls(*values)
    assert type(fast) is cls
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(cls)[0].name, "changed")


def test_every_field_is_required() -> None:
    if not speedups.ENABLED:  # the reference path is the class itself, defaults and all
        assert fast_constructor(MessageInfo) is MessageInfo
        return
    with pytest.raises(TypeError):
        fast_constructor(MessageInfo)("m1")


def test_a_class_with_post_init_is_built_by_itself() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    assert fast_constructor(Checked) is Checked
