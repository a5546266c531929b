"""Reading the demo's processes from outside, as a monitoring system or a client would: the
worker's and the projector's `/metrics` (Prometheus text) and the simulator's `/_sim/stats` into
one `Sample`; the projection from the read API and from the state topic; the simulator's truth."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ingest.demo.view import Sample
from ingest.eventlog.codec import SchemaIds
from ingest.state.projection import MailboxState
from ingest.state.store import read_state_topic

Metrics = Mapping[str, list[tuple[dict[str, str], float]]]
"""Sample name → (labels, value) of every sample with that name."""


def parse_metrics(text: str) -> Metrics:
    parsed: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[sample.name].append((dict(sample.labels), float(sample.value)))
    return parsed


def total(metrics: Metrics, name: str, **labels: str) -> int:
    """Sum of the samples of `name` whose labels include `labels`."""
    return int(
        sum(
            value
            for sample_labels, value in metrics.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )
    )


def by_label(metrics: Metrics, name: str, label: str) -> dict[str, int]:
    result: dict[str, int] = defaultdict(int)
    for sample_labels, value in metrics.get(name, []):
        if value:  # every label value is exported from the start, most of them at 0
            result[sample_labels.get(label, "")] += int(value)
    return dict(result)


def sample_of(at: float, sim: Mapping[str, Any], worker: Metrics, projector: Metrics) -> Sample:
    """One `Sample` from the three sources (an empty source counts as zeros)."""
    events, snapshots = "cumi_projector_events_total", "cumi_projector_snapshots_total"
    emitted = int(sim.get("emitted_total", 0))
    return Sample(
        at=at,
        subscribed=total(worker, "cumi_worker_subscriptions", state="active"),
        # the scenario's own events: published ones (minus the Notifier's recovery events) plus
        # those a down Notifier withheld
        generated=emitted - int(sim.get("coalesced", 0)) + int(sim.get("withheld", 0)),
        emitted=emitted,
        malformed=int(sim.get("malformed", 0)),
        corrupted=int(sim.get("corrupted", 0)),
        corrupted_malformed=int(sim.get("corrupted_malformed", 0)),
        duplicates=int(sim.get("duplicates", 0)),
        withheld=int(sim.get("withheld", 0)),
        coalesced=int(sim.get("coalesced", 0)),
        lost=int(sim.get("lost", 0)),
        received=total(worker, "cumi_worker_events_received_total"),
        published=total(worker, "cumi_worker_events_published_total"),
        dead_letters=total(worker, "cumi_worker_events_dead_lettered_total"),
        snapshots=by_label(worker, "cumi_worker_snapshots_published_total", "reason"),
        session_restarts=by_label(worker, "cumi_worker_session_restarts_total", "reason"),
        worker_queue=total(worker, "cumi_worker_queue_events"),
        reconcile_pending=total(worker, "cumi_worker_reconcile_pending"),
        worker_ready=total(worker, "cumi_worker_ready") == 1,
        applied=total(projector, events, outcome="applied")
        + total(projector, snapshots, outcome="applied"),
        ignored=sum(
            total(projector, name, outcome=outcome)
            for name in (events, snapshots)
            for outcome in ("duplicate", "stale")
        ),
        lag=total(projector, "cumi_projector_consumer_lag"),
        projector_ready=total(projector, "cumi_projector_ready") == 1,
    )


class Probe:
    """Scrapes the three processes (one that does not answer yet contributes zeros) and reads
    the projection and the truth."""

    def __init__(
        self, http: aiohttp.ClientSession, simulator: str, worker: str, projector: str
    ) -> None:
        self._http = http
        self._simulator, self._projector = simulator, projector
        self._urls = (f"{simulator}/_sim/stats", f"{worker}/metrics", f"{projector}/metrics")

    async def sample(self, at: float) -> Sample:
        sim, worker, projector = await asyncio.gather(*(self._get(url) for url in self._urls))
        return sample_of(
            at,
            _json(sim),
            parse_metrics(worker) if worker else {},
            parse_metrics(projector) if projector else {},
        )

    async def _get(self, url: str) -> str:
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return ""

    async def truth(self) -> dict[str, Any]:
        """The simulator's ground truth, in the fold format."""
        truth: dict[str, Any] = await self._get_json(f"{self._simulator}/_sim/truth")
        return truth

    async def kpis(self, kpis_url: str, now: float) -> dict[str, Any]:
        """The KPI consumer's KPIs as of `now` (`GET /kpis`); {} while it is not ready."""
        text = await self._get(f"{kpis_url}/kpis?now={now}")
        return _json(text)

    async def kpi_truth(self, now: float) -> dict[str, Any]:
        """The simulator's KPIs as of `now` (`/_sim/kpi-truth`)."""
        truth: dict[str, Any] = await self._get_json(f"{self._simulator}/_sim/kpi-truth?now={now}")
        return truth

    async def read_api_state(self, known: set[str]) -> dict[str, Any]:
        """Every mailbox the projector serves or `known` names, from `GET /mailboxes/<id>` (the
        fold format plus detail); a mailbox it does not know is left out."""
        ids, after = set(known), ""
        while True:
            url = f"{self._projector}/mailboxes?limit=1000&after={after}"
            page = await self._get_json(url)
            ids.update(m["mailbox_id"] for m in page["mailboxes"])
            if not page.get("next"):
                break
            after = page["next"]
        limit = asyncio.Semaphore(8)

        async def one(mailbox_id: str) -> tuple[str, Any]:
            url = f"{self._projector}/mailboxes/{mailbox_id}"
            async with limit, self._http.get(url) as response:
                return mailbox_id, (await response.json() if response.status == 200 else None)

        found = await asyncio.gather(*(one(m) for m in sorted(ids)))
        return {mailbox_id: body for mailbox_id, body in found if body is not None}

    async def _get_json(self, url: str) -> Any:
        async with self._http.get(url) as response:
            response.raise_for_status()
            return await response.json()


async def state_topic_state(
    bootstrap: str, topic: str, ids: SchemaIds | None = None
) -> dict[str, Any]:
    """The committed state of every mailbox on the compacted state topic, in the fold format
    (`ids`: the schema registry's, in registry mode)."""
    records = await read_state_topic(topic, ids=ids, bootstrap_servers=bootstrap)
    return {mid: MailboxState.from_record(record).to_json() for mid, record in records.items()}


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
