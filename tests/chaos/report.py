"""Run-size switches and the results log of the reliability suite.

`RELIABILITY_SOAK=1` (set by `make soak`) selects the long runs: more chaos seeds and faults,
10,000+ fuzz inputs. `RELIABILITY_RESULTS=<path>` appends one JSON line per measured run, the
source of the table in docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

SOAK_VAR = "RELIABILITY_SOAK"
RESULTS_VAR = "RELIABILITY_RESULTS"


def soak() -> bool:
    """Whether the long (soak) sizes were asked for."""
    return os.environ.get(SOAK_VAR, "") not in ("", "0")


def record(kind: str, **fields: Any) -> None:
    """Append `{"kind": …, "at": …, **fields}` to the results log, when one is configured."""
    target = os.environ.get(RESULTS_VAR)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"kind": kind, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **fields}
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
