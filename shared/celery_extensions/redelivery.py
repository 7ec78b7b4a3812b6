"""Putting back the messages of dead workers on a Redis broker: at once for a worker known to be gone,
after the visibility timeout for the rest.

kombu's Redis transport keeps each delivered message in the ``unacked`` hash (scored by delivery time in
``unacked_index``) until it is acknowledged, and a sweep puts back those older than
``MALLOPS_BROKER_VISIBILITY_TIMEOUT`` (7,200 s by default). That sweep runs from a prefork worker's event
loop; workers whose pool has none (the notifier's ``threads``, ``solo``) get a :class:`Sweeper` thread.

The timeout cannot be short (a task running longer than it would run twice), so a whole worker killed
(OOM killer, ``docker kill``, a lost host) would strand its tasks for two hours. kombu's hash does not say
which worker holds a message, so the worker's pop does: :mod:`shared.celery_extensions.reliable_pop`
writes the holder of each delivery (``mallops:held:<delivery tag>``: the worker's hostname, main pid and
the delivery's time) in the same atomic command that takes the message and writes its ``unacked`` entry,
and whatever removes that entry removes the holder too (the ``QoS`` of
:mod:`shared.celery_extensions.dead_letters`, :meth:`Requeuer.requeue`). Where the pop is kombu's BRPOP,
the holder is the receipt :mod:`shared.celery_extensions.events` writes when the worker receives the
message (``mallops:holder:<task id>:<attempt>``, the same JSON, in the cache Redis). Each worker
process's liveness is ``mallops:worker_processes``, one field per ``hostname#pid``, refreshed by the
heartbeat. Every worker on a Redis broker runs a :class:`Requeuer` thread that, every
``MALLOPS_WORKER_HEARTBEAT_INTERVAL`` seconds, puts back at once the unacknowledged messages whose holder
is gone: no heartbeat for ``MALLOPS_WORKER_OFFLINE_AFTER`` seconds, or a shutdown (``worker-offline``)
that left them unacknowledged. A live worker busy with a long task keeps its message.

Exactly once: the scan holds kombu's own ``unacked_mutex`` (so no two requeuers, nor a kombu sweep, run
at the same time), and each message goes back in a WATCH/MULTI transaction that first checks the
delivery is the one the holder received (its ``unacked_index`` score is not newer than the receipt), so
a message already put back and delivered to another worker is never put back again. The requeued message
carries ``mallops_requeues`` (one more than before) and kombu's ``redelivered`` flag (the poison cap of
:mod:`shared.celery_extensions.task_base` counts its runs). Before it goes back, a ``task-requeued`` event
is written and the result backend's state becomes ``REQUEUED`` until another worker starts the task.

A requeuer acts only after its own Redis connection has been up for ``MALLOPS_WORKER_OFFLINE_AFTER``
seconds: when Redis comes back after an outage, every live worker first gets the time to heartbeat.
A message with no holder (taken by kombu's BRPOP, its worker killed before the receipt's flush: a few
milliseconds) is left to the visibility timeout. RabbitMQ needs none of this: it gives back a dead
connection's messages at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import redis
from celery import Celery, signals
from kombu.transport.redis import Mutex, MutexHeld

from shared.cache import redis_client
from shared.contracts import DELIVERY_HOLDER_PREFIX, HOLDER_PREFIX, PROCESSES_KEY, REQUEUES_HEADER, TaskState
from shared.settings import Settings

log = logging.getLogger("mallops.redelivery")

REQUEUED: Final = TaskState.REQUEUED
FINAL_RESULT_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
# a receipt is written after kombu scored the delivery, in the same process: allow for float rounding
SCORE_SLACK = 0.001
PRUNE_EVERY = 60.0
HOLDER_TTL_MARGIN = 3600  # a holder outlives the visibility timeout, after which kombu's sweep takes over


# set (True) on a kombu message whose reliable pop wrote its holder: its worker writes no receipt for it
HELD_BY_POP: Final = "mallops_held_by_pop"


def holder_key(task_id: str, attempt: int) -> str:
    """The receipt a worker writes in the cache Redis when it receives a task (events)."""
    return f"{HOLDER_PREFIX}{task_id}:{attempt}"


def delivery_holder_key(delivery_tag: Any) -> str:
    """The holder the reliable pop writes in the broker's Redis with the message's ``unacked`` entry."""
    tag = delivery_tag.decode() if isinstance(delivery_tag, bytes) else str(delivery_tag)
    return f"{DELIVERY_HOLDER_PREFIX}{tag}"


def holder_ttl(visibility_timeout: float) -> int:
    """The lifetime in seconds of a holder (either kind)."""
    return int(visibility_timeout) + HOLDER_TTL_MARGIN


def process_field(hostname: str, pid: int) -> str:
    return f"{hostname}#{pid}"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    ts: float

    @classmethod
    def parse(cls, raw: str | bytes | None) -> Holder | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["host"]), int(data["pid"]), float(data["ts"]))
        except (ValueError, KeyError, TypeError):
            return None

    def dumps(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "ts": self.ts}, separators=(",", ":"))


def holder_gone(holder: Holder, record: str | None, now: float, offline_after: float) -> bool:
    """Whether the worker process that received a message is known to be gone: it said so when it shut
    down, or it has not written a heartbeat for ``offline_after`` seconds (never, since the receipt)."""
    if record is None:
        return now - holder.ts > offline_after
    try:
        data = json.loads(record)
        last = float(data["last"])
    except (ValueError, KeyError, TypeError):
        return now - holder.ts > offline_after
    if data.get("status") == "offline":
        return True
    return now - max(last, holder.ts) > offline_after


@dataclass(frozen=True)
class Requeued:
    task_id: str
    name: str | None
    queue: str | None
    attempt: int
    requeues: int
    holder: Holder


class Requeuer:
    """Puts back the unacknowledged messages of gone workers; :meth:`scan` is one pass."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.cache = redis_client(settings)

    def scan(self) -> list[Requeued]:
        """One pass over kombu's unacknowledged messages; the ones put back (none if another process is
        sweeping at the same moment)."""
        done: list[Requeued] = []
        with self.app.connection_for_write() as connection:
            channel: Any = connection.default_channel
            client = channel.client
            try:
                with Mutex(client, channel.unacked_mutex_key, channel.unacked_mutex_expire):
                    for tag, score, holder in self.orphans(channel, client):
                        requeued = self.requeue(channel, client, tag, score, holder)
                        if requeued is not None:
                            done.append(requeued)
            except MutexHeld:
                pass
        return done

    def orphans(self, channel: Any, client: Any) -> list[tuple[Any, float, Holder]]:
        """(delivery tag, delivery score, holder) of each unacknowledged delivery whose holder is gone."""
        index = client.zrange(channel.unacked_index_key, 0, -1, withscores=True)
        if not index:
            return []
        raws = client.hmget(channel.unacked_key, [tag for tag, _ in index])
        deliveries = []
        for (tag, score), raw in zip(index, raws, strict=True):
            headers = (json.loads(raw)[0].get("headers") or {}) if raw is not None else {}
            if headers.get("id"):
                deliveries.append((tag, float(score), holder_key(str(headers["id"]), int(headers.get("retries") or 0))))
        if not deliveries:
            return []
        # the pop's holder (broker) where the reliable pop took the message, else the receipt (cache)
        popped = client.mget([delivery_holder_key(tag) for tag, _, _ in deliveries])
        missing = [key for (_, _, key), held in zip(deliveries, popped, strict=True) if held is None]
        received = dict(zip(missing, self.cache.mget(missing), strict=True)) if missing else {}
        processes = self.cache.hgetall(PROCESSES_KEY)
        now = time.time()
        found = []
        for (tag, score, key), held in zip(deliveries, popped, strict=True):
            holder = Holder.parse(held if held is not None else received.get(key))
            if holder is None or holder.ts + SCORE_SLACK < score:
                continue  # no receipt of this delivery (yet): not ours to judge
            record = processes.get(process_field(holder.host, holder.pid))
            if holder_gone(holder, record, now, self.settings.worker_offline_after):
                found.append((tag, score, holder))
        return found

    def prune(self) -> int:
        """Forget the liveness of worker processes silent for longer than ``MALLOPS_WORKER_PURGE_AFTER``."""
        now = time.time()
        stale = []
        for name, record in self.cache.hgetall(PROCESSES_KEY).items():
            try:
                last = float(json.loads(record)["last"])
            except (ValueError, KeyError, TypeError):
                last = 0.0
            if now - last > self.settings.worker_purge_after:
                stale.append(name)
        return int(self.cache.hdel(PROCESSES_KEY, *stale)) if stale else 0

    def requeue(self, channel: Any, client: Any, tag: Any, score: float, holder: Holder) -> Requeued | None:
        """Put one delivery back on its queue (front), if it is still the one ``holder`` received."""
        outcome: list[Requeued] = []

        def transaction(pipe: Any) -> None:
            outcome.clear()
            current = pipe.zscore(channel.unacked_index_key, tag)
            raw = pipe.hget(channel.unacked_key, tag)
            if current is None or raw is None or float(current) != score:
                return  # acknowledged, or put back and delivered again meanwhile
            payload, exchange, routing_key = json.loads(raw)
            headers = payload.setdefault("headers", {})
            requeues = int(headers.get(REQUEUES_HEADER) or 0) + 1
            headers[REQUEUES_HEADER] = requeues
            item = Requeued(
                str(headers.get("id")),
                headers.get("task"),
                routing_key,
                int(headers.get("retries") or 0),
                requeues,
                holder,
            )
            announce(self.app, item)  # before the message can reach another worker
            pipe.multi()
            pipe.zrem(channel.unacked_index_key, tag)
            pipe.hdel(channel.unacked_key, tag)
            pipe.delete(delivery_holder_key(tag))
            channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost=False)
            outcome.append(item)

        client.transaction(transaction, channel.unacked_key, channel.unacked_index_key)
        if outcome:
            item = outcome[0]
            log.warning(
                "put back %s[%s]: its worker %s (pid %d) is gone", item.name, item.task_id, holder.host, holder.pid
            )
            return item
        return None


def announce(app: Celery, item: Requeued) -> None:
    """The task reads REQUEUED: a ``task-requeued`` event (flushed) and the result backend's state."""
    from shared.celery_extensions import events

    lifecycle = events.for_app(app)
    if lifecycle is not None:
        lifecycle.emit_requeued(
            item.task_id,
            name=item.name,
            queue=item.queue,
            retries=item.attempt,
            requeues=item.requeues,
            worker=item.holder.host,
        )
    try:
        mark_requeued(app, item.task_id)
    except redis.RedisError as exc:
        log.warning("could not mark %s REQUEUED in the result backend: %s", item.task_id, exc)


def mark_requeued(app: Celery, task_id: str) -> bool:
    """Set the stored state of an unfinished task to REQUEUED (and publish it, as Celery does)."""
    backend: Any = app.backend
    client = getattr(backend, "client", None)
    if client is None:
        return False
    key = backend.get_key_for_task(task_id)
    changed: list[bool] = []

    def transaction(pipe: Any) -> None:
        changed.clear()
        raw = pipe.get(key)
        if raw is None:
            return
        meta = json.loads(raw)
        if meta.get("status") in FINAL_RESULT_STATES:
            return
        meta["status"] = REQUEUED
        data = json.dumps(meta)
        pipe.multi()
        pipe.set(key, data, keepttl=True)
        pipe.publish(key, data)
        changed.append(True)

    client.transaction(transaction, key)
    return bool(changed)


class RequeueLoop(threading.Thread):
    """Every ``MALLOPS_WORKER_HEARTBEAT_INTERVAL`` seconds, a :meth:`Requeuer.scan`; none while the cache
    Redis (where liveness is written) was unreachable or restarted within ``MALLOPS_WORKER_OFFLINE_AFTER``
    seconds, since live workers may not have written their heartbeats yet."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="mallops-requeue", daemon=True)
        self.requeuer = Requeuer(app, settings)
        self.interval = settings.worker_heartbeat_interval
        self.offline_after = settings.worker_offline_after
        self.stopping = threading.Event()
        self.failed_at: float | None = None
        self._warned_at = 0.0
        self._next_prune = 0.0

    def step(self) -> list[Requeued]:
        now = time.monotonic()
        if self.failed_at is not None and now - self.failed_at < self.offline_after:
            return []
        uptime = int(self.requeuer.cache.info("server").get("uptime_in_seconds", 0))
        if uptime < self.offline_after:
            return []
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.requeuer.prune()
        return self.requeuer.scan()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.step()
            except Exception as exc:  # Redis away: try again, after live workers have had time to beat
                self.failed_at = time.monotonic()
                if self.failed_at - self._warned_at > 30:
                    self._warned_at = self.failed_at
                    log.warning("could not look for the messages of gone workers: %s", exc)


class Sweeper(threading.Thread):
    """Every ``interval`` seconds: put back the messages whose visibility timeout has passed."""

    def __init__(self, app: Celery, interval: float) -> None:
        super().__init__(name="mallops-restore", daemon=True)
        self.app = app
        self.interval = interval
        self.stopping = threading.Event()

    def sweep(self) -> None:
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # the broker may be away for a while: try again next time
                log.warning("could not put back the messages of dead workers: %s", exc)


def _on_ready(sender: Any = None, **_: Any) -> None:
    from shared.celery_extensions.config import find_extensions

    extensions = find_extensions(getattr(sender, "app", None))
    pool = getattr(sender, "pool", None)
    if extensions is None or extensions.settings.broker_is_amqp or pool is None:
        return  # RabbitMQ gives back a dead consumer's messages by itself
    settings = extensions.settings
    if extensions.requeuer is None and extensions.events is not None:  # receipts come with the events
        extensions.requeuer = RequeueLoop(sender.app, settings)
        extensions.requeuer.start()
    if extensions.sweeper is None and not type(pool).__module__.endswith("prefork"):  # prefork: event loop
        extensions.sweeper = Sweeper(sender.app, settings.broker_restore_interval)
        extensions.sweeper.start()


def _on_shutdown(sender: Any = None, **_: Any) -> None:
    from shared.celery_extensions.config import find_extensions

    extensions = find_extensions(getattr(sender, "app", None))
    if extensions is None:
        return
    for thread in (extensions.sweeper, extensions.requeuer):
        if thread is not None:
            thread.stopping.set()
    extensions.sweeper = extensions.requeuer = None


def connect() -> None:
    """When a worker is ready (Redis brokers only): a :class:`RequeueLoop`, and a :class:`Sweeper` if its
    pool has no event loop."""
    signals.worker_ready.connect(_on_ready, weak=False, dispatch_uid="mallops.redelivery.ready")
    signals.worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="mallops.redelivery.shutdown")
