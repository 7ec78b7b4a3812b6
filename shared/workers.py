"""The workers seen recently (from the heartbeats they write into Redis) and the queues' lengths (from the
broker): what the gateway, the monitor and ``mallops doctor`` show. Everything here only reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis

from shared.cache import redis_client
from shared.catalog import QUEUES
from shared.contracts import EVENT_STREAM, PRIORITY_STEPS, WORKERS_KEY, WorkerRecord, priority_keys
from shared.settings import Settings, get_settings


def list_workers(settings: Settings | None = None, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker seen recently, from the heartbeats workers write into Redis.

    A worker is ``offline`` when it said so on shutdown or when it has been silent for more than
    ``MALLOPS_WORKER_OFFLINE_AFTER`` seconds; workers silent for longer than
    ``MALLOPS_WORKER_PURGE_AFTER`` are left out. Sorted by hostname.
    """
    settings = settings or get_settings()
    now = time.time() if now is None else now
    raw = redis_client(settings).hgetall(WORKERS_KEY)
    workers = []
    for hostname, value in raw.items():
        record = WorkerRecord.from_json(hostname, value)
        if record is None:
            continue
        silence = now - record.last_heartbeat
        if silence > settings.worker_purge_after:
            continue
        online = record.status != "offline" and silence <= settings.worker_offline_after
        workers.append(
            {
                "hostname": hostname,
                "status": "online" if online else "offline",
                "stopped": record.status == "offline",  # it said so on shutdown (else it was lost)
                "service": record.service,
                "pid": record.pid,
                "queues": record.queues,
                "concurrency": record.concurrency,
                "active": record.active if online else 0,
                "processed": record.processed,
                "last_heartbeat": _iso(dt.datetime.fromtimestamp(record.last_heartbeat, dt.UTC)),
                "seconds_since_heartbeat": round(max(silence, 0.0), 3),
            }
        )
    return sorted(workers, key=lambda w: w["hostname"])


@functools.lru_cache(maxsize=4)
def _broker_client(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def queue_lengths(
    settings: Settings | None = None, workers: Iterable[dict[str, Any]] | None = None
) -> dict[str, dict[str, int]]:
    """``{queue: {"pending": messages waiting in the broker, "consumers": online workers}}`` for every
    mallops queue and any other queue an online worker consumes. ``pending`` counts the Redis priority
    sub-queues too; ``workers`` (from :func:`list_workers`) saves reading them again."""
    settings = settings or get_settings()
    worker_list = list(workers) if workers is not None else list_workers(settings)
    consumers: dict[str, int] = defaultdict(int)
    for worker in worker_list:
        if worker["status"] == "online":
            for queue in worker["queues"]:
                consumers[queue] += 1
    names = list(QUEUES) + sorted(set(consumers) - set(QUEUES))
    url = settings.celery_broker_url
    pending = _redis_pending(url, names) if url.startswith(("redis://", "rediss://")) else _amqp_pending(url, names)
    return {name: {"pending": pending[name], "consumers": consumers.get(name, 0)} for name in names}


def _redis_pending(url: str, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue's Redis lists (the queue and its priority sub-queues), one round trip."""
    pipe = _broker_client(url).pipeline(transaction=False)
    for name in names:
        for key in priority_keys(name):
            pipe.llen(key)
    sizes = pipe.execute()
    per = len(PRIORITY_STEPS)
    return {name: int(sum(sizes[i * per : (i + 1) * per])) for i, name in enumerate(names)}


def _amqp_pending(url: str, names: list[str]) -> dict[str, int]:
    """Messages ready in each queue of an AMQP broker (RabbitMQ), by a passive declare; a queue that does
    not exist yet has none."""
    from kombu import Connection  # type: ignore[attr-defined]

    pending: dict[str, int] = {}
    with Connection(url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        for name in names:
            channel = connection.channel()  # a channel per queue: a 404 closes the channel it happened on
            try:
                declared = channel.queue_declare(queue=name, passive=True)
                pending[name] = int(declared.message_count)
            except connection.channel_errors:
                pending[name] = 0
            finally:
                with contextlib.suppress(*connection.channel_errors, *connection.connection_errors):
                    channel.close()
    return pending


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def monitor_lag(settings: Settings | None = None, *, now: float | None = None) -> dict[str, Any]:
    """How far the monitor is behind the event stream, read from the stream's consumer groups:
    ``{"reading": a group exists, "unread": entries not yet delivered, "pending": delivered but not
    acknowledged, "lag_seconds": age of the oldest of those (0 when none; None without a group)}``."""
    now = time.time() if now is None else now
    client = redis_client(settings or get_settings())
    groups: list[dict[str, Any]] = (
        client.xinfo_groups(EVENT_STREAM) if client.exists(EVENT_STREAM) else []  # type: ignore[no-untyped-call]
    )
    if not groups:
        return {"reading": False, "unread": 0, "pending": 0, "lag_seconds": None}
    oldest: list[float] = []
    for group in groups:
        first = client.xrange(EVENT_STREAM, min=f"({group['last-delivered-id']}", count=1)
        if first:
            oldest.append(int(first[0][0].split("-")[0]) / 1000)
        summary = client.xpending(EVENT_STREAM, group["name"])  # type: ignore[no-untyped-call]
        if summary and summary.get("pending"):
            oldest.append(int(str(summary["min"]).split("-")[0]) / 1000)
    return {
        "reading": True,
        "unread": max(int(group.get("lag") or 0) for group in groups),
        "pending": sum(int(group.get("pending") or 0) for group in groups),
        "lag_seconds": round(max(now - min(oldest), 0.0), 3) if oldest else 0.0,
    }
