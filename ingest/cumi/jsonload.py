"""JSON decoding for the hot paths: orjson's speed with the standard library's results.

Parsing the server's JSON is the largest single cost of ingesting an event (the Bayeux payload in
the worker, the raw notification in `ingest.cumi.normalizer`): `json.loads` takes ≈ 5 µs for a
typical notification, orjson ≈ 1.3 µs. But orjson is stricter than the standard library: it refuses
`NaN`/`Infinity`, numbers beyond a double's range and lone surrogates in text, where `json.loads`
returns values that the normalizer then rejects *field by field* with a precise reason (and, in a
Bayeux payload holding many events, only the one bad event is dead-lettered). So anything orjson
refuses is decoded again by `json.loads`, which decides. orjson also reads an integer beyond 64 bits
as a float (a 30-digit USN would become `bad_type` instead of `bad_value`): a document with a run of
19 or more digits anywhere — rare; ids and phone numbers are shorter — goes to `json.loads`
directly. The result, a value or the exception, is thus always the standard library's (a unit
test and a hypothesis property compare the two).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from ingest import speedups

_DIGITS_AS_ZEROS = bytes(b"0"[0] if b"0"[0] <= i <= b"9"[0] else b" "[0] for i in range(256))
_LONG_RUN = b"0" * 19


def _fast_loads(document: bytes | str) -> Any:
    """`json.loads(document)`, faster: raises what `json.loads` raises (ValueError subclasses,
    RecursionError) for what it refuses."""
    try:
        data = document.encode() if isinstance(document, str) else document
    except UnicodeEncodeError:  # lone surrogates: orjson refuses them
        return json.loads(document)
    # a C-speed scan for 19 digits in a row (a regular expression costs four times orjson)
    if _LONG_RUN not in data.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(document)


loads: Callable[[bytes | str], Any] = _fast_loads if speedups.ENABLED else json.loads
"""`json.loads(document)`, faster: raises what `json.loads` raises (ValueError subclasses,
RecursionError) for what it refuses. `json.loads` itself with the speedups off."""
