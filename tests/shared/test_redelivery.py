"""The requeuer against a real redis-server: the messages of a gone worker go back once, a live worker's
stay, and a delivery that is not the one its holder received is left alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from shared.celery_app import create_celery_app
from shared.celery_extensions.redelivery import (
    REQUEUED,
    Holder,
    RequeueLoop,
    Requeuer,
    holder_key,
    process_field,
)
from shared.contracts import PROCESSES_KEY, REQUEUES_HEADER
from shared.settings import Settings
from tests.harness import RedisServer, start_redis

LONG = "mallops.maintenance.long_running_task"


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
