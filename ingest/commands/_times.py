"""The one time argument of the commands (`tail --since`, `replay --at`): ISO 8601 (zone-less
means UTC), epoch milliseconds, or an age such as `90s`, `15m`, `2h`, `3d` (that long ago)."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Callable

_AGE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_moment(text: str, now: Callable[[], dt.datetime] | None = None) -> dt.datetime:
    """An aware datetime (argparse type: raises ArgumentTypeError on anything else)."""
    value = text.strip()
    if value.isdigit():
        return _EPOCH + dt.timedelta(milliseconds=int(value))
    age = _AGE.match(value)
    if age:
        return (now or _utcnow)() - dt.timedelta(seconds=int(age[1]) * _UNITS[age[2]])
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ISO 8601, epoch milliseconds or an age like 15m or 2h"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def to_millis(moment: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
