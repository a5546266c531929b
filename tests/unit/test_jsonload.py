"""ingest.cumi.jsonload: orjson's speed, always the standard library's result."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.cumi import jsonload


def outcome(decode: object, document: bytes | str) -> tuple[str, str]:
    """What decoding gives, comparable across decoders: ('ok', repr) or ('error', type)."""
    assert callable(decode)
    try:
        return "ok", repr(decode(document))
    except (ValueError, RecursionError) as e:
        kind = "ValueError" if isinstance(e, ValueError) else type(e).__name__
        return "error", kind


# where orjson, called directly, would differ from json.loads
DIVERGENT = [
    b"1e400",  # orjson refuses a float beyond a double, json.loads says inf
    b"[NaN, -Infinity]",
    b'"\\ud800"',  # a lone surrogate escape
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b'{"USN": 123456789012345678901234567890}',  # orjson: a float, json.loads: an int
    b"-9223372036854775809",
    '{"USN": 99999999999999999999}',
    "[" * 2000 + "]" * 2000,  # orjson's recursion limit; json.loads raises RecursionError
]

SAME = [
    b'{"MailboxId": "jdoe", "USN": 2265, "MessageInfo": [{"MessageId": "0:abc"}]}',
    b"18446744073709551615",  # 20 digits: read by json.loads, which agrees
    b'{"a": 1, "a": 2}',
    b" [1.5e3, -0, 0.1e-400, true, null] ",
    '{"name": "caf\u00e9 \U0001f600"}',
    b"",
    b"{",
    b'"\x00"',
    "\u0661\u0662",  # Arabic-Indic digits are not JSON numbers
]


class TestAgreesWithTheStandardLibrary:
    @pytest.mark.parametrize("document", DIVERGENT + SAME)
    def test_known_cases(self, document: bytes | str) -> None:
        assert outcome(jsonload.loads, document) == outcome(json.loads, document)

    def test_a_huge_integer_stays_an_integer(self) -> None:
        value = jsonload.loads(b'{"USN": 123456789012345678901234567890}')["USN"]
        assert value == 123456789012345678901234567890 and isinstance(value, int)

    def test_nan_is_read_as_the_standard_library_reads_it(self) -> None:
        assert math.isnan(jsonload.loads(b'{"USN": NaN}')["USN"])

    @settings(max_examples=400)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**80), max_value=2**80)
            | st.floats()
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        st.booleans(),
    )
    def test_any_document(self, value: object, as_bytes: bool) -> None:
        text = json.dumps(value)  # NaN and Infinity included, as json.dumps writes them
        document = text.encode("utf-8", "surrogatepass") if as_bytes else text
        assert outcome(jsonload.loads, document) == outcome(json.loads, document)

    @settings(max_examples=400)
    @given(st.binary(max_size=64) | st.text(alphabet='{}[]",:0123456789.eE+-tfnul \\', max_size=40))
    def test_any_input(self, document: bytes | str) -> None:
        assert outcome(jsonload.loads, document) == outcome(json.loads, document)
