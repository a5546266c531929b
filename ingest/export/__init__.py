"""The log in SQL: `ingest export` writes the events topic and the fold's end-of-day states to
Parquet (partitioned by day, resumable), and DuckDB queries compute the voicemail KPIs from them
(docs/voicemail-kpis.md).

- `exporter.export()`: the read loop and its committed batches;
- `layout`: the directory, the manifest, crash-safe writes; `rows`: the tables' columns;
- `sql.run_query(name, export_dir, as_of=…)`: the shipped queries (`queries/*.sql`).
"""
