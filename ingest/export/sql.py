"""The shipped DuckDB queries over an export, callable from Python with their parameters.

The queries are the `.sql` files of `ingest/export/queries/` — the same text the service owners'
page (docs/voicemail-kpis.md) shows and the DuckDB command line runs: `setup.sql` makes the views
and macros, each other file is one query. Parameters are DuckDB variables (`getvariable('as_of')`),
so a file runs unchanged in the DuckDB shell after `SET VARIABLE as_of = TIMESTAMPTZ '…'`.

    rows = run_query("unread_messages", "/data/export", as_of=now)   # → list of dicts
"""

from __future__ import annotations

import datetime as dt
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb

from ingest.errors import ConfigError

_QUERIES = files("ingest.export") / "queries"
SETUP = "setup"
_PARAMETER = re.compile(r"getvariable\('(\w+)'\)")


def query_names() -> list[str]:
    """Every shipped query (without `setup`), KPI queries and examples."""
    return sorted(
        entry.name.removesuffix(".sql")
        for entry in _QUERIES.iterdir()
        if entry.name.endswith(".sql") and entry.name != f"{SETUP}.sql"
    )


def query_text(name: str) -> str:
    entry = _QUERIES / f"{name}.sql"
    if not entry.is_file():
        raise ConfigError(f"no query {name!r}; there are: {', '.join(query_names())}")
    return entry.read_text(encoding="utf-8")


def parameters_of(name: str) -> set[str]:
    """The variables a query reads (e.g. {"as_of"})."""
    return set(_PARAMETER.findall(query_text(name)))


def connect(export_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the export's views and macros (setup.sql), times in UTC."""
    root = Path(export_dir)
    if not (root / "events").is_dir():
        raise ConfigError(f"{root} holds no export (no events/ folder): run `ingest export`")
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute("SET file_search_path = ?", [str(root.resolve())])
    connection.execute(query_text(SETUP))
    return connection


def run_query(
    name: str,
    export_dir: Path | str,
    *,
    as_of: dt.datetime | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> list[dict[str, Any]]:
    """Run the shipped query `name` on an export; its rows as dicts. `as_of` ("now" for ages;
    aware, or UTC if naive) is required by the queries that read it."""
    needed = parameters_of(name)
    if "as_of" in needed and as_of is None:
        raise ConfigError(f"query {name} needs as_of")
    con = connection if connection is not None else connect(export_dir)
    try:
        if as_of is not None:
            moment = as_of if as_of.tzinfo else as_of.replace(tzinfo=dt.UTC)
            con.execute("SET VARIABLE as_of = CAST(? AS TIMESTAMPTZ)", [moment])
        cursor = con.execute(query_text(name))
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        if connection is None:
            con.close()
