"""aiokafka client helpers for a cluster that goes away: paced metadata retries (no busy loop
while it is unreachable) and abandoning a producer without waiting for its batches; and, at
start-up, telling a cluster that refuses us apart from one that is away (`access_refused`).

aiokafka (0.14) refreshes cluster metadata in a background task that runs whenever it is woken,
and several loops wake it again the moment a refresh fails: the producer's sender, as soon as a
partition has no known leader (a broker's controlled shutdown leaves every partition it led
leaderless), and each failed connection attempt. With the broker gone the refresh fails in
microseconds (connection refused), so these loops spin: a whole core and two ERROR lines per turn
(measured 8,000-11,000 lines per second, docs/reliability.md). None of `retry_backoff_ms`,
`metadata_max_age_ms` or a reconnect backoff (aiokafka has none) applies to that loop.

`pace_metadata(client)` wraps the client's metadata refresh so that a failed refresh returns only
after a backoff (ops.backoff, growing from `retry_backoff_ms` to a couple of seconds; reset by the
first success). Everything waiting for the refresh waits with it, so the spinning loops turn at
most a few times per second, and a cluster that comes back is noticed within the cap.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    KafkaError,
    ProducerClosed,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from ingest.ops.backoff import Backoff
from ingest.ops.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

METADATA_BACKOFF = Backoff(base=0.1, cap=2.0)
"""From aiokafka's default retry_backoff_ms (100 ms) to 2 s: the longest a recovered cluster can go
unnoticed is about 2 s, the cost of a dead one about one connection attempt per second."""


def pace_metadata(
    client: Any, backoff: Backoff = METADATA_BACKOFF, clock: Clock = SYSTEM_CLOCK
) -> None:
    """Make `client` (an aiokafka `AIOKafkaClient`: `producer.client`, `consumer._client`) wait
    after each failed metadata refresh. Idempotent. Uses aiokafka's private `_metadata_update`
    (pinned version; docs/design.md §7)."""
    if getattr(client, "_cumi_paced", False):
        return
    refresh = client._metadata_update
    failures = 0

    async def paced(cluster_metadata: Any, topics: Any) -> bool:
        nonlocal failures
        updated: bool = await refresh(cluster_metadata, topics)
        if updated:
            failures = 0
        else:
            failures += 1
            await clock.sleep(backoff.delay(failures))
        return updated

    client._metadata_update = paced
    client._cumi_paced = True


async def abandon(producer: AIOKafkaProducer, within: float = 5.0) -> None:
    """Close `producer` without waiting for its batches, which fail with ProducerClosed (their
    owner sends them again, or gives them up); `stop()` alone waits for every one to be delivered,
    for ever while the cluster is away. Uses aiokafka's private sender task and accumulator
    (pinned version; docs/design.md §7): the sender is stopped first, so that no request in
    flight re-queues a batch being failed."""
    sender = producer._sender
    if sender is not None and sender.sender_task is not None:
        sender.sender_task.cancel()
        await asyncio.gather(sender.sender_task, return_exceptions=True)
    accumulator = producer._message_accumulator
    queued = [b for queue in accumulator._batches.values() for b in queue]
    # a batch sent before and queued again for a retry left the pending set, yet the callback it
    # got when first sent removes it from there once it completes (KeyError): put it back
    accumulator._pending_batches.update(b for b in queued if b.retry_count > 0)
    batches = queued + [b for b in accumulator._pending_batches if b not in queued]
    accumulator.fail_all(ProducerClosed())
    for batch in batches:  # nobody waits for them any more: asyncio would log each
        for future in (batch.future, batch._drain_waiter):
            if future.done() and not future.cancelled():
                future.exception()
    try:
        await asyncio.wait_for(producer.stop(), within)
    except (TimeoutError, KafkaError) as e:
        log.debug("abandoned Kafka producer did not close cleanly: %r", e)


async def close_consumer(consumer: AIOKafkaConsumer, within: float = 10.0) -> None:
    """`consumer.stop()`, bounded, and quiet about what aiokafka leaks while the cluster is away:
    its fetcher awaits the fetch tasks it has just cancelled, so `stop()` raises CancelledError
    (aiokafka 0.14) although nobody cancelled the caller — that one is swallowed, a real
    cancellation of the caller is not."""
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(consumer.stop(), within)
    except (KafkaError, TimeoutError) as e:
        log.debug("Kafka consumer did not close cleanly: %r", e)
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        log.debug("Kafka consumer closed with a stray cancellation of its fetch tasks")


PROBE_TIMEOUT_S = 5.0
_ACCEPTED = ""
_CONNECTION_KWARGS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


async def access_refused(
    client_kwargs: Mapping[str, Any], within: float = PROBE_TIMEOUT_S
) -> str | None:
    """Why the bootstrap servers refuse this client, when it is a matter of credentials or
    certificates (what retrying cannot fix); None when one of them accepts us, or when none can be
    reached at all (an outage: the caller waits for Kafka as usual).

    aiokafka's bootstrap logs each failure and then raises a bare "Unable to bootstrap" that has
    lost the cause; one connection per server with a metadata request keeps it. `client_kwargs`
    is `KafkaSettings.client_kwargs()`; the servers are asked at once, each for `within` s."""
    servers = [s.strip() for s in str(client_kwargs["bootstrap_servers"]).split(",") if s.strip()]
    kwargs = {k: client_kwargs[k] for k in _CONNECTION_KWARGS if k in client_kwargs}
    answers = await asyncio.gather(*(_probe(server, kwargs, within) for server in servers))
    if _ACCEPTED in answers:
        return None
    return next((answer for answer in answers if answer), None)


async def _probe(server: str, kwargs: Mapping[str, Any], within: float) -> str | None:
    """ "" when the server answers a metadata request, the refusal when it refuses us (or we it),
    None when it cannot be reached."""
    host, _, port = server.rpartition(":")
    connection: AIOKafkaConnection | None = None
    try:
        async with asyncio.timeout(within):
            connection = await create_conn(
                host.strip("[]"), int(port), request_timeout_ms=int(within * 1000), **kwargs
            )
            await connection.send(MetadataRequest([]))
    except SaslAuthenticationFailed:
        return (
            f"SASL authentication failed ({kwargs.get('sasl_mechanism')} as user "
            f"{kwargs.get('sasl_plain_username')!r}): check KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD_FILE"
        )
    except UnsupportedSaslMechanismError:
        return (
            f"the broker does not offer SASL mechanism {kwargs.get('sasl_mechanism')}: "
            "check KAFKA_SASL_MECHANISM"
        )
    except ssl.SSLCertVerificationError as e:
        return f"its TLS certificate is not trusted ({e.verify_message}): check KAFKA_SSL_CA_FILE"
    except (OSError, KafkaError, TimeoutError, ValueError) as e:
        refusal = _tls_alert(e)
        if refusal is None:
            return None
        return (
            f"it refused the TLS handshake ({refusal}): it wants a client certificate it trusts, "
            "check KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE"
        )
    finally:
        if connection is not None:
            connection.close()
    return _ACCEPTED


def _tls_alert(error: BaseException) -> str | None:
    """The TLS alert the server sent (its reason, e.g. "SSLV3_ALERT_BAD_CERTIFICATE") if that is
    what ended the connection: aiokafka keeps the SSLError as the cause of its connection error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and "ALERT" in str(seen.reason or ""):
            return str(seen.reason)
        seen = seen.__cause__ or seen.__context__
    return None
