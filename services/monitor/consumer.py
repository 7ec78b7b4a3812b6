"""Reading the lifecycle stream with a consumer group and storing it, with a reconnect loop.

At start the monitor first re-reads its own pending entries (delivered before a crash but never
acknowledged), then periodically takes over other consumers' entries idle for longer than
``MALLOPS_MONITOR_CLAIM_IDLE`` (XAUTOCLAIM), and otherwise blocks on new entries (XREADGROUP ``>``).
A read that returns less than a full batch waits until its oldest entry is ``MALLOPS_MONITOR_LINGER_SECONDS``
old (default 0.1) and reads again before it stores them: each batch is a database transaction, and at a
few hundred tasks a second a read finds a handful of events, so without the wait the monitor spent most
of its CPU on transactions of a few rows (docs/performance.md).
A batch is acknowledged (XACK) only after its database transaction committed; the counters in memory
are updated only then too. The group starts at the beginning of the stream, so events emitted before
the monitor first ran, or while it was down, are all processed.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy.exc

from services.monitor.metrics import Health, MetricStore
from services.monitor.store import load_metrics, purge_hostname, reset_changed_histograms, write_events
from shared.contracts import EVENT_FIELD, EVENT_STREAM, MONITOR_GROUP, WORKERS_KEY, WorkerRecord
from shared.db import session_scope
from shared.settings import Settings
from shared.taskmeta import META_KEY

log = logging.getLogger("mallops.monitor")

BLOCK_MS = 1000
STATS_EVERY = 1.0
PURGE_EVERY = 5.0

Entry = tuple[str, dict[str, str] | None]

# KEYS: tasks' metadata keys; ARGV[1]: seconds. Shortens each TTL to ARGV[1] unless it has less left.
_SHORTEN = """
local ttl = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local left = redis.call('TTL', key)
  if left == -1 or left > ttl then redis.call('EXPIRE', key, ttl) end
end
return #KEYS
"""


def clean_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """The event made safe to fold into the history, or None if it cannot be used.

    Events come from every mallops process, and some fields from the messages they handled, so they are
    not trusted: NUL characters in strings are replaced, also inside the ``arguments`` JSON (PostgreSQL
    text cannot hold them, and one such value, e.g. a task's result echoing its input, would fail its whole
    batch again and again; in a JSON column it would fail every query that reads it as text); a ``ts``
    that is not a number drops the event; ``retries`` that is not a count becomes 0; an ``id`` is a string.
    """
    event = {key: _without_nul(value) for key, value in event.items()}
    ts = event.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        return None
    retries = event.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        event["retries"] = 0
    if "id" in event and not isinstance(event["id"], str):
        event["id"] = str(event["id"]) if type(event["id"]) is int else None
    return event


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def entry_seq(entry_id: str) -> int:
    """A stream id ``<ms>-<n>`` as one increasing integer (ms * 1000 + n)."""
    ms, _, n = entry_id.partition("-")
    return int(ms) * 1000 + int(n or 0)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def entry_time(entry_id: str) -> float:
    return int(entry_id.partition("-")[0]) / 1000.0


class StreamConsumer:
    def __init__(self, settings: Settings, store: MetricStore, health: Health, name: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.name = name or f"monitor@{socket.gethostname()}"
        self.redis: redis.Redis[str] = redis.Redis.from_url(
            settings.cache_redis_url,
            decode_responses=True,
            socket_timeout=BLOCK_MS / 1000 + 10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self._next_claim = 0.0
        self._next_stats = 0.0
        self._next_purge = 0.0

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; reconnects (with backoff) after Redis or database errors."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.start()
                backoff = 0.5
                while not stop.is_set():
                    self.step()
            except (redis.RedisError, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
                self.health.connected = False
                self.health.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("monitor lost Redis or the database (%s); retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.redis.close()

    def start(self) -> None:
        """Create the group if needed, load the persisted counters, process our own pending entries."""
        try:
            self.redis.xgroup_create(EVENT_STREAM, MONITOR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        with session_scope(self.settings) as session:
            changed = reset_changed_histograms(session, self.store.buckets)
        if changed:
            log.warning("histogram buckets changed: %s started afresh", ", ".join(changed))
        with session_scope(self.settings) as session:
            self.store.load(load_metrics(session))
        self.health.connected = True
        self.health.last_error = None
        last = "0"
        while True:  # entries delivered to this consumer before a restart, never acknowledged
            reply = self.redis.xreadgroup(
                MONITOR_GROUP, self.name, {EVENT_STREAM: last}, count=self.settings.monitor_batch_size
            )
            entries = reply[0][1] if reply else []
            if not entries:
                break
            self.process(entries)
            last = entries[-1][0]

    def step(self) -> int:
        """One round: maybe claim stale entries, read new ones (blocking up to 1 s), housekeeping."""
        now = time.monotonic()
        done = 0
        if now >= self._next_claim:
            self._next_claim = now + max(self.settings.monitor_claim_idle / 2, 1.0)
            done += self.claim_stale()
        reply = self.redis.xreadgroup(
            MONITOR_GROUP, self.name, {EVENT_STREAM: ">"}, count=self.settings.monitor_batch_size, block=BLOCK_MS
        )
        entries = reply[0][1] if reply else []
        if entries:
            done += self.process(self.linger(entries))
        else:
            self.health.lag_seconds = 0.0
        if now >= self._next_stats:
            self._next_stats = now + STATS_EVERY
            self.refresh_stats()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            self.purge_offline_workers()
            self.trim_stream()
        return done

    def linger(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` and those that arrived until the oldest was ``monitor_linger_seconds`` old, up to a
        full batch."""
        size, linger = self.settings.monitor_batch_size, self.settings.monitor_linger_seconds
        wait = linger - (time.time() - entry_time(entries[0][0]))
        if len(entries) >= size or wait <= 0:
            return entries
        time.sleep(min(wait, linger))
        reply = self.redis.xreadgroup(MONITOR_GROUP, self.name, {EVENT_STREAM: ">"}, count=size - len(entries))
        return entries + (reply[0][1] if reply else [])

    def claim_stale(self) -> int:
        """Take over entries another (dead) consumer of the group was given but never acknowledged."""
        done = 0
        start = "0-0"
        for _ in range(100):
            reply = self.redis.xautoclaim(
                EVENT_STREAM,
                MONITOR_GROUP,
                self.name,
                min_idle_time=int(self.settings.monitor_claim_idle * 1000),
                start_id=start,
                count=self.settings.monitor_batch_size,
            )
            start, entries = reply[0], reply[1]
            if entries:
                done += self.process(entries)
            if start in ("0-0", "0"):
                break
        return done

    # -- one batch -------------------------------------------------------------------------------

    def process(self, entries: Sequence[Entry]) -> int:
        """Store a batch, then acknowledge it. Entries trimmed from the stream (no fields) and entries
        that are not valid events are acknowledged without effect."""
        events: list[tuple[int, dict[str, Any]]] = []
        for entry_id, fields in entries:
            if not fields or EVENT_FIELD not in fields:
                continue
            try:
                event = json.loads(fields[EVENT_FIELD])
            except ValueError:
                log.warning("skipping stream entry %s: not JSON", entry_id)
                continue
            cleaned = clean_event(event) if isinstance(event, dict) else None
            if cleaned is None:
                log.warning("skipping stream entry %s: not a usable event", entry_id)
                continue
            events.append((entry_seq(entry_id), cleaned))
        with session_scope(self.settings) as session:
            deltas = write_events(session, events, buckets=self.store.buckets)
        ids = [entry_id for entry_id, _ in entries]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(EVENT_STREAM, MONITOR_GROUP, *ids)
            self.forget_finished(pipe, deltas.finished)
            pipe.execute()
        self.store.apply(deltas)
        self.health.events_processed += len(ids)
        self.health.batches += 1
        self.health.lag_seconds = max(time.time() - entry_time(ids[0]), 0.0)
        return len(ids)

    def forget_finished(self, pipe: redis.client.Pipeline[str], task_ids: Sequence[str]) -> None:
        """The history now holds these tasks' final state and answers for them (the gateway's task view
        falls back to it): their metadata ``mallops:gw:task:<id>`` is deleted, or its TTL shortened to
        ``MALLOPS_TASK_META_FINISHED_TTL_SECONDS``, so that Redis holds metadata only for unfinished tasks."""
        if not task_ids:
            return
        keys = [META_KEY + task_id for task_id in task_ids]
        ttl = self.settings.task_meta_finished_ttl_seconds
        if ttl <= 0:
            pipe.unlink(*keys)
            return
        pipe.eval(_SHORTEN, len(keys), *keys, ttl)  # one script: never lengthened (EXPIRE LT needs Redis 7)

    # -- housekeeping ----------------------------------------------------------------------------

    def refresh_stats(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(EVENT_STREAM)
        pipe.xinfo_groups(EVENT_STREAM)
        length, groups = pipe.execute()
        self.health.stream_length = int(length)
        for group in groups:
            if group.get("name") == MONITOR_GROUP:
                self.health.pending_entries = int(group.get("pending") or 0) + int(group.get("lag") or 0)

    def trim_stream(self) -> str | None:
        """Drop the stream's entries older than ``MALLOPS_EVENTS_STREAM_RETENTION_SECONDS`` that every consumer
        group has read and acknowledged (XTRIM MINID ~): in steady state the stream holds about a minute of
        events instead of ``MALLOPS_EVENTS_STREAM_MAXLEN`` entries, and nothing unprocessed is lost (an
        unread or unacknowledged entry stops the trim). Returns the MINID used, or None."""
        retention = self.settings.events_stream_retention_seconds
        if retention <= 0:
            return None
        keep = (int((time.time() - retention) * 1000), 0)
        groups = self.redis.xinfo_groups(EVENT_STREAM)  # type: ignore[no-untyped-call]
        if not groups:
            return None
        for group in groups:
            oldest = _stream_id(str(group.get("last-delivered-id") or "0-0"))
            if int(group.get("pending") or 0):
                summary = self.redis.xpending(EVENT_STREAM, group["name"])  # type: ignore[no-untyped-call]
                oldest = min(oldest, _stream_id(str(summary.get("min") or "0-0")))
            keep = min(keep, oldest)
        if keep <= (0, 0):
            return None
        minid = f"{keep[0]}-{keep[1]}"
        self.redis.xtrim(EVENT_STREAM, minid=minid, approximate=True)
        return minid

    def purge_offline_workers(self) -> list[str]:
        """Forget workers silent for longer than ``MALLOPS_WORKER_PURGE_AFTER``: their liveness entry
        and every metric series labelled with their hostname (bounded label cardinality)."""
        now = time.time()
        gone = []
        for hostname, value in self.redis.hgetall(WORKERS_KEY).items():
            record = WorkerRecord.from_json(hostname, value)
            last = record.last_heartbeat if record is not None else 0.0
            if now - last > self.settings.worker_purge_after:
                gone.append(hostname)
        if gone:
            with session_scope(self.settings) as session:
                for hostname in gone:
                    purge_hostname(session, hostname)
            self.redis.hdel(WORKERS_KEY, *gone)
            for hostname in gone:
                self.store.purge_host(hostname)
                log.info("purged offline worker %s from metrics", hostname)
        return gone
