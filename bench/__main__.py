"""`python -m bench [name …]`: run every bench/bench_*.py module, or the named ones."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules([here])
        if info.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = [name.removeprefix("bench_") for name in argv] or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}")
        return 2
    for name in names:
        print(f"== bench {name}", flush=True)
        importlib.import_module(f"bench.bench_{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
