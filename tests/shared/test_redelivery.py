"""The requeuer against a real redis-server: the messages of a gone worker go back once, a live worker's
stay, and a delivery that is not the one its holder received is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from shared.celery_app import create_celery_app
from shared.celery_extensions.redelivery import (
    HOLDER_TTL_MARGIN,
    REQUEUED,
    Holder,
    RequeueLoop,
    Requeuer,
    delivery_holder_key,
    holder_key,
    process_field,
)
from shared.celery_extensions.reliable_pop import HOLDER_OPTION, take_unanswered
from shared.contracts import PROCESSES_KEY, REQUEUES_HEADER
from shared.settings import Settings
from tests.harness import RedisServer, start_redis, wait_until

LONG = "mallops.maintenance.long_running_task"
OFFLINE_AFTER = 3.0  # MALLOPS_WORKER_OFFLINE_AFTER of the test's requeuer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = start_redis(tmp_path / "redis")
    yield redis_server
    redis_server.stop()


@pytest.fixture
def app(server: RedisServer, settings: Settings) -> Iterator[Celery]:
    base = server.url_base
    own = settings.model_copy(update={"redis_url": base, "broker_url": f"{base}/0", "result_backend": f"{base}/1"})
    app = create_celery_app("requeue-test", own)
    yield app
    app.close()


def deliver(channel: Any, app: Celery, holder: tuple[str, int, float] | None, alive: bool) -> str:
    """Publish a long task, take it from its queue unacknowledged (as a worker does) a minute ago, and
    record its holder (host, pid, receipt time after the delivery) with a heartbeat now (``alive``) or
    a minute ago."""
    task_id = str(app.send_task(LONG, kwargs={"steps": 1, "step_seconds": 0}, queue="default").id)
    message = channel.basic_get("default", no_ack=False)
    assert message is not None
    assert message.headers["id"] == task_id
    delivered_at = time.time() - 60  # a minute ago
    redis_of(app, 0).zadd("unacked_index", {message.delivery_tag: delivered_at})
    if holder is not None:
        host, pid, offset = holder
        cache = redis_of(app, 2)
        cache.set(holder_key(task_id, 0), Holder(host, pid, delivered_at + offset).dumps())
        last = time.time() if alive else time.time() - 60
        cache.hset(PROCESSES_KEY, process_field(host, pid), json.dumps({"last": last, "status": "online"}))
    return task_id


def redis_of(app: Celery, db: int) -> Any:
    import redis

    return redis.Redis.from_url(str(app.conf.broker_url).rsplit("/", 1)[0] + f"/{db}")


def test_a_gone_workers_message_goes_back_once_even_with_two_requeuers(app: Celery, settings: Settings) -> None:
    own = app.conf
    requeuers = [Requeuer(app, settings.model_copy(update={"redis_url": own.broker_url.rsplit("/", 1)[0]}))]
    requeuers.append(Requeuer(app, requeuers[0].settings))
    with app.connection_for_write() as connection:
        channel = connection.channel()
        gone = deliver(channel, app, ("w-gone@h", 111, 0.01), alive=False)
        live = deliver(channel, app, ("w-live@h", 222, 0.01), alive=True)
        stale = deliver(channel, app, ("w-gone@h", 111, -30), alive=False)  # a receipt of an older delivery
        unknown = deliver(channel, app, None, alive=False)  # no receipt: left to the visibility timeout
        app.backend.store_result(gone, {"current": 1, "total": 3}, "PROGRESS")

        results: list[list[Any]] = []
        threads = [threading.Thread(target=lambda r=r: results.append(r.scan())) for r in requeuers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        results.append(requeuers[0].scan())  # and once more afterwards
        done = [item for result in results for item in result]
        assert [item.task_id for item in done] == [gone]
        assert done[0].holder.host == "w-gone@h"
        assert done[0].requeues == 1

        broker = redis_of(app, 0)
        queued = [json.loads(raw) for raw in broker.lrange("default", 0, -1)]
        assert [m["headers"]["id"] for m in queued] == [gone]
        assert queued[0]["headers"][REQUEUES_HEADER] == 1
        assert queued[0]["properties"]["delivery_info"]["redelivered"] is True
        unacked = {json.loads(raw)[0]["headers"]["id"] for raw in broker.hvals("unacked")}
        assert unacked == {live, stale, unknown}
        assert app.AsyncResult(gone).state == REQUEUED

        # delivered again (a new score): its old holder is gone, but this delivery is not its to judge
        again = channel.basic_get("default", no_ack=False)
        assert again.headers["id"] == gone
        assert requeuers[1].scan() == []
        assert broker.llen("default") == 0
        channel.qos._delivered.clear()  # nothing to give back on close: the test's own bookkeeping


def test_the_loop_waits_while_redis_is_younger_than_the_offline_delay(app: Celery, settings: Settings) -> None:
    loop = RequeueLoop(app, settings.model_copy(update={"redis_url": app.conf.broker_url.rsplit("/", 1)[0]}))
    assert loop.step() == []  # the server started a moment ago: live workers may not have beaten yet
    loop.failed_at = time.monotonic()
    assert loop.step() == []


def test_a_worker_killed_right_after_its_pop_is_named_by_the_pop_and_its_message_goes_back(
    app: Celery, settings: Settings
) -> None:
    """Issue 18's soak loss: a worker SIGKILLed with a pop in flight. The pop itself writes the message's
    holder beside its ``unacked`` entry, so with no receipt ever written (the worker died before it read the
    pop's reply) the requeuer still knows whose it is and puts it back; the acknowledgement of a message
    removes its holder with it."""
    base = app.conf.broker_url.rsplit("/", 1)[0]
    requeuer = Requeuer(app, settings.model_copy(update={"redis_url": base, "worker_offline_after": OFFLINE_AFTER}))
    broker, cache = redis_of(app, 0), redis_of(app, 2)
    connection = app.connection_for_read()
    # what the worker's consumer does (dead_letters.Consumer.connection_for_read): name the holder
    connection.transport_options = {**connection.transport_options, HOLDER_OPTION: "w-killed@h"}
    received: list[Any] = []
    consumer = connection.Consumer([Queue("default")], callbacks=[lambda body, message: received.append(message)])
    consumer.consume()
    channel: Any = connection.default_channel
    wait_until(lambda: _drain(connection) or channel._pop_state == "idle", timeout=10, message="an idle consumer")
    popped_at = time.time()
    task_id = str(app.send_task(LONG, kwargs={"steps": 1, "step_seconds": 0}, queue="default").id)
    link = channel.client.connection
    wait_until(lambda: link.can_read(timeout=0), timeout=10, message="the push of the write to the queue")
    with contextlib.suppress(Empty):
        channel._brpop_read()  # the push read, the pop sent
    assert channel._pop_state == "pending"
    wait_until(lambda: broker.llen("default") == 0, timeout=10, message="the pop to run")
    link.disconnect()  # and the worker is gone before it reads the reply: nothing received, no receipt written
    take_unanswered()  # what a live worker would put back itself once Redis answers: this one is dead
    with contextlib.suppress(Exception):
        connection.close()
    assert received == []

    tags = [tag.decode() for tag in broker.hkeys("unacked")]
    assert len(tags) == 1
    score = broker.zscore("unacked_index", tags[0])
    assert score is not None
    raw = broker.get(delivery_holder_key(tags[0]))
    assert raw is not None  # written by the pop, in the same command as the unacked entry
    assert json.loads(raw) == {"host": "w-killed@h", "pid": os.getpid(), "ts": score}
    assert raw.decode() == Holder("w-killed@h", os.getpid(), score).dumps()  # a receipt's bytes
    expected_ttl = settings.broker_visibility_timeout + HOLDER_TTL_MARGIN
    assert expected_ttl - 5 <= broker.ttl(delivery_holder_key(tags[0])) <= expected_ttl
    assert popped_at <= score <= time.time()
    assert cache.get(holder_key(task_id, 0)) is None  # the receipt of the received message was never written

    # the worker's last heartbeat was before the pop; a requeuer finds it silent for longer than the delay
    last = time.time() - OFFLINE_AFTER - 1
    cache.hset(PROCESSES_KEY, process_field("w-killed@h", os.getpid()), json.dumps({"last": last, "status": "online"}))
    assert requeuer.scan() == []  # not yet: silent for less than MALLOPS_WORKER_OFFLINE_AFTER since the pop
    wait_until(lambda: time.time() - score > OFFLINE_AFTER, timeout=30, interval=0.2, message="the delay")
    done = requeuer.scan()
    assert [(item.task_id, item.holder.host, item.holder.pid) for item in done] == [
        (task_id, "w-killed@h", os.getpid())
    ]
    assert [json.loads(m)["headers"]["id"] for m in broker.lrange("default", 0, -1)] == [task_id]
    assert broker.hlen("unacked") == 0
    assert broker.get(delivery_holder_key(tags[0])) is None  # put back with its entry

    # delivered again, to a worker that acknowledges it: the holder goes with the unacked entry
    with app.connection_for_read() as connection:
        connection.transport_options = {**connection.transport_options, HOLDER_OPTION: "w-next@h"}
        again: list[Any] = []
        consumer = connection.Consumer(
            [Queue("default")], callbacks=[lambda body, message: again.append(message)], accept=["json"]
        )
        with consumer:
            wait_until(lambda: _drain(connection) or again, timeout=10, message="delivered again")
        holder = Holder.parse(broker.get(delivery_holder_key(tags[0])))
        assert holder is not None
        assert holder.host == "w-next@h"
        again[0].ack()
    assert broker.hlen("unacked") == 0
    assert broker.get(delivery_holder_key(tags[0])) is None


def _drain(connection: Any) -> bool:
    with contextlib.suppress(TimeoutError, socket.timeout):
        connection.drain_events(timeout=0.2)
    return False
