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
CHAOS_TEST = "tests/integration/test_chaos.py"
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


def _faults(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def _outage_table(runs: list[dict[str, Any]]) -> list[str]:
    """One row per broker outage of the long-outage runs: length, then per process the log lines
    (per minute) and CPU share while the broker was away; the run's events and mismatches."""
    lines = [
        "",
        "| outage | worker: log lines (per min), CPU | projector: log lines (per min), CPU "
        "| run: events emitted, log records (snapshots), unplanned exits, mismatches |",
        "|---|---|---|---|",
    ]
    for run in runs:
        exits = sum(len(v) for v in run["unplanned_exits"].values())
        summary = (
            f"{run['events_emitted']:,}, {run['log_records']:,} ({run['snapshots']:,}), "
            f"{exits}, {run['total_mismatches']}"
        )
        for outage in run["outages"]:
            cells = [
                f"{outage[name]['log_lines']} ({outage[name]['log_lines_per_minute']:g}), "
                f"{outage[name]['cpu_percent']} %"
                for name in ("worker-0", "projector")
            ]
            lines.append(f"| {outage['seconds']:.0f} s | {cells[0]} | {cells[1]} | {summary} |")
    return lines


def _cluster_table(runs: list[dict[str, Any]]) -> list[str]:
    """One row per fault of the cluster runs (tests/integration/test_cluster_chaos.py)."""
    lines = [
        "",
        "| cluster fault | held for | failover / acks resumed | longest pause in acks "
        "| records held (max) | worker: log lines, CPU | projector: log lines, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for fault in run["outages"]:
            if "failover_s" in fault:
                timing = f"failover {fault['failover_s']} s"
            elif "resumed_s" in fault:
                timing = f"resumed {fault['resumed_s']} s after the start call"
            else:
                timing = "—"
            cells = [
                f"{fault[name]['log_lines']}, {fault[name]['cpu_percent']} %"
                for name in ("worker-0", "projector")
            ]
            lines.append(
                f"| {fault['fault']} | {fault['hold']:g} s | {timing} "
                f"| {fault.get('longest_stall_s')} s | {fault.get('held_max')} "
                f"| {cells[0]} | {cells[1]} |"
            )
    return lines


def render(path: Path) -> str:
    """Markdown tables of a results log (the chaos runs, the fuzz counts, the memory peaks)."""
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    chaos = [e for e in entries if e["kind"] == "chaos"]
    lines = [
        "| seed | workers | faults survived | events emitted | log records (snapshots) "
        "| dead letters / malformed deliveries | time | mismatches | reproduce |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in chaos:
        soak_flag = "RELIABILITY_SOAK=1 " if e.get("soak") else ""
        command = f"{soak_flag}RELIABILITY_SEEDS={e['seed']} .venv/bin/pytest {CHAOS_TEST}"
        lines.append(
            f"| {e['seed']} | {e['workers']} | {_faults(e['faults'])} | {e['events_emitted']:,} "
            f"| {e['log_records']:,} ({e['snapshots']:,}) "
            f"| {e['dead_letters']} / {e['malformed_deliveries']} | {e['seconds']:.0f} s "
            f"| {e['total_mismatches']} "
            f"| `{command}` |"
        )
    lines += _outage_table([e for e in entries if e["kind"] == "long-outage"])
    lines += _cluster_table([e for e in entries if e["kind"] == "cluster-chaos"])
    lines += ["", "| fuzz test | inputs | outcomes |", "|---|---|---|"]
    for e in (e for e in entries if e["kind"] == "fuzz"):
        outcomes = e.get("outcomes") or {"lines": e.get("lines")}
        shown = ", ".join(f"{k} {v}" for k, v in outcomes.items())
        lines.append(f"| {e['test']} | {e['inputs']:,} | {shown} |")
    total = sum(e["inputs"] for e in entries if e["kind"] == "fuzz")
    lines.append(f"| **total** | **{total:,}** | |")
    lines += ["", "| input refused | peak traced memory |", "|---|---|"]
    for e in (e for e in entries if e["kind"] == "memory"):
        lines.append(f"| {e['case']} | {e['peak_bytes'] / 1024:,.0f} KiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(render(Path(sys.argv[1])))
