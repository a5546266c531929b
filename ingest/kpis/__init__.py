"""Voicemail KPIs from the event log: `ingest kpis` (docs/kpis.md has the definitions).

`ledger` folds the events topic with the one projection and keeps, per message, what the KPIs need
beyond folder state (arrival, first listen); `exposition` turns a ledger into Prometheus metric
families; `consumer` is the service that reads the topic and serves them.
"""
