"""Fast paths, and the one switch that turns them all off.

The hot paths of the pipeline take shortcuts that were measured to matter (docs/benchmarks.md).
Each one lives next to the reference path it shortcuts, and a test holds the two together:

- records: `fast_constructor` (slots set directly) ~ the dataclass's own `__init__`
  (test_fast_constructor);
- cumi: `jsonload.loads` (orjson, with fallbacks) ~ `json.loads` (test_jsonload); the
  normalizer's plain-notification path ~ its field-by-field checks (test_normalizer,
  test_properties);
- eventlog: the codec's MailboxEvent writer ~ fastavro's writer (test_codec); the reader's event
  and snapshot decoders ~ `codec.decode` (test_log_reader, test_log_reader_properties);
- state: the projection's memoised change resolution ~ `_resolve_change` (test_projection); the
  straight-line state writer (ingest.state.encoding) ~ `to_record()` + fastavro's writer
  (test_state_encoding); the direct state reader (ingest.state.decoding) ~
  `MailboxState.from_record(decode_state_record(v))` (test_state_decoding);
- ops: the streaming services' GC threshold ~ CPython's default (test_gc_tuning).

`CUMI_NO_SPEEDUPS=1` (read once, at import) makes every one of them take its reference path: the
pipeline then computes the same records and states, only slower. `make test` runs the unit suite
and the log/fold integration tests once more that way, so a fast path can never be the only path
that is right.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

ENABLED: bool = os.environ.get("CUMI_NO_SPEEDUPS", "").strip().lower() not in {"1", "true", "yes"}
"""False when the environment asks for the reference paths."""


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """`cls(*values)` (all fields, positionally) for a frozen slotted dataclass, at half the cost:
    the generated `__init__` sets each field through `object.__setattr__`, this sets the slots
    directly — what the frozen `__init__` does, minus the lookups. For the hot paths that build a
    record per event (the normalizer, the log reader); unit tests compare the records with the
    class's own. The class itself if it does more on construction (`__post_init__`, fields not
    in `__init__`), or with the speedups off."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not ENABLED or hasattr(cls, "__post_init__") or not all(f.init for f in fields):
        return cls
    names = [f.name for f in fields]
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update({f"set_{n}": vars(cls)[n].__set__ for n in names})
    lines = [f"def build({', '.join(names)}):", "    record = new(cls)"]
    lines += [f"    set_{n}(record, {n})" for n in names] + ["    return record"]
    exec("\n".join(lines), scope)  # the names are our own classes' field names
    built: Callable[..., T] = scope["build"]
    return built
