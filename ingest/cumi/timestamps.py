"""CUMI's zone-less time stamps.

`EventTime` and `ReceiveTime` look like `11:15:40 PM 10/30/2008` and carry no zone. Each is read
in its configured zone (`ingest.cumi.normalizer.TimeZones`) and kept as an aware UTC datetime next
to the raw string. Local times that a DST change makes ambiguous (the repeated hour) or nonexistent
(the skipped hour) resolve with zoneinfo's `fold=0`: an ambiguous time is the *first* occurrence
(the offset in force before the change); a nonexistent time is read with the offset in force
before the gap (02:30 on a US spring-forward day in Pacific time is 10:30 UTC). Deterministic, and
the raw string keeps what the server sent.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

_TIME = re.compile(r"(\d\d?):(\d\d):(\d\d) ([AaPp])[Mm] (\d\d?)/(\d\d?)/(\d{4})")


@functools.lru_cache(maxsize=8192)
def parse_cumi_time(raw: str, zone: dt.tzinfo) -> dt.datetime | None:
    """`%I:%M:%S %p %m/%d/%Y` in `zone` → aware UTC, or None. Cached: a burst of events shares its
    EventTime second, and strptime costs ~13 µs where this costs ~4 µs uncached."""
    match = _TIME.fullmatch(raw)
    if match is None:
        return None
    hour, minute, second, half, month, day, year = match.groups()
    h = int(hour)
    if not 1 <= h <= 12:
        return None
    h = h % 12 + (12 if half in "Pp" else 0)
    try:
        local = dt.datetime(int(year), int(month), int(day), h, int(minute), int(second))
        return local.replace(tzinfo=zone).astimezone(dt.UTC)
    except (ValueError, OverflowError):  # e.g. 02/30, minute 61, year 1 east of Greenwich
        return None
