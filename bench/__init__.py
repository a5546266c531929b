"""Micro- and load benchmarks. Not tests: they measure and report, they never assert timings.

Each `bench/bench_<name>.py` defines `main(argv: list[str] | None = None) -> int`, prints its
results and may call `record(name, result)` to keep the numbers (with the machine they were
measured on) in `bench/results/<name>.json`. `python -m bench [name …]` runs them all, or the
named ones, each with default options (`python -m bench.bench_<name> --help` for the options).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def record(name: str, result: dict[str, Any]) -> Path:
    """Write `result` and the machine description to bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path
