"""The package's layering (docs/design.md §2): imports point one way, and only front ends import
argparse or rich. Read from the source with `ast`, so a violation fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ingest"

# a layer may import itself and the layers listed before it
LAYERS: list[set[str]] = [
    {"errors", "events", "speedups"},
    {"settings"},
    {"ops"},
    {"cumi"},
    {"eventlog"},
    {"state"},
    {"mailboxes"},
    {"export"},
    {"kpis"},
    {"worker", "projector"},
    {"commands", "cli", "__main__"},
]
DEV_TOOLS = {"demo", "devservices", "simulator"}
"""Above the pipeline: they may use it (the simulator does not); the pipeline never uses them."""

FRONT_END_LIBRARIES = {"argparse", "rich"}


def unit_of(path: Path) -> str:
    """`ingest/cumi/session.py` → "cumi"; `ingest/worker.py` → "worker"."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def is_front_end(path: Path) -> bool:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] in {"commands", "cli.py", "__main__.py", "demo"} or path.name in {
        "cli.py",
        "__main__.py",
    }


def imports_of(path: Path) -> set[str]:
    """Top-level names imported by a module (`ingest.cumi.rest` → "ingest.cumi")."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def rank(unit: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if unit in layer), None)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if unit_of(p) != "__init__")


class TestLayering:
    """Every ingest module imports only its own layer and the ones below."""

    @pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
    def test_imports_point_down(self, path: Path) -> None:
        unit = unit_of(path)
        mine = rank(unit)
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] != "ingest" or len(parts) < 2:
                continue
            target = parts[1]
            if target in DEV_TOOLS:
                assert unit in DEV_TOOLS | {"commands", "cli", "__main__"}, f"{unit} uses {name}"
                continue
            theirs = rank(target)
            if mine is None or theirs is None:  # a dev tool using the pipeline, or ingest/*
                continue
            assert theirs <= mine, f"{path.relative_to(PACKAGE)} imports {name} (a higher layer)"

    def test_the_simulator_plays_the_vendor(self) -> None:
        """It never imports the pipeline: it must not share our reading of the protocol."""
        for path in (PACKAGE / "simulator").rglob("*.py"):
            pipeline = {
                n
                for n in imports_of(path)
                if n.startswith("ingest.")
                and not n.startswith(("ingest.simulator", "ingest.errors", "ingest.ops"))
            }
            assert not pipeline, f"{path.name} imports {sorted(pipeline)}"

    @pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
    def test_only_front_ends_import_argparse_or_rich(self, path: Path) -> None:
        used = {n.split(".")[0] for n in imports_of(path)} & FRONT_END_LIBRARIES
        assert not used or is_front_end(path), f"{path.relative_to(PACKAGE)} imports {used}"
