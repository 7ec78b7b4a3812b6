"""mallops' Redis transport (shared.celery_extensions.dead_letters.RedisTransport) against a real redis-server
that is stopped and started again: a consumer whose connection is lost while a BRPOP is pending closes cleanly.

What Celery's consumer does on a lost connection is done here by hand, in the order it does it: the
connection is collected (its transport forgets the kombu connection), then closed. With kombu's own
channel that close raised ``AttributeError: 'NoneType' object has no attribute 'hostname'`` whenever a
message was unacknowledged, and the worker stopped (issue 12; celery/kombu#582). Also, what the closing
channel could not put back while Redis was away (a message the pending BRPOP took, the unacknowledged ones)
goes back on its queue as soon as Redis answers. The worker-level test under load is
tests/reliability/test_redis_restart_under_load.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue  # type: ignore[attr-defined]
from kombu.message import Message

from shared.celery_app import create_celery_app
from shared.settings import Settings
from tests.harness import RedisServer, start_redis, wait_until

pytestmark = pytest.mark.integration

UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", appendonly=True)
    if server.process is None:
        server.stop()
        pytest.skip("stopping and restarting Redis needs the redis-server binary")
    yield server
    server.stop()


def _connect(settings: Settings, server: RedisServer) -> Connection:
    """A consumer connection exactly as a worker makes it (transport, transport options)."""
    app = create_celery_app("transport-test", settings.model_copy(update={"broker_url": f"{server.url_base}/0"}))
    connection: Connection = app.connection_for_read()
    return connection


QUEUE = Queue("default", Exchange("default", type="direct"), routing_key="default")


def _publish(server: RedisServer, settings: Settings, *bodies: dict[str, int]) -> None:
    with _connect(settings, server) as publisher:
        producer = publisher.Producer()
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key="default", declare=[QUEUE])


def _consume_until_brpop_pending(connection: Connection, expected: int) -> tuple[list[Message], Any]:
    """A consumer with room for more (its channel sends the next BRPOP at once) that has received
    ``expected`` messages, and beside it a channel with an auto-delete fanout queue, as Celery's
    remote-control mailbox has. Returns the messages and the consumer's channel, its BRPOP pending."""
    received: list[Message] = []
    consumer = Consumer(connection, [QUEUE], callbacks=[lambda body, message: received.append(message)])
    consumer.qos(prefetch_count=3)
    consumer.consume()
    mailbox = Queue("mailbox", Exchange("mailbox", type="fanout"), auto_delete=True)
    Consumer(connection.channel(), [mailbox], no_ack=True).consume()

    def drain() -> int:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
        return len(received)

    channel: Any = connection.default_channel
    wait_until(lambda: drain() == expected and channel._in_poll, timeout=10, message="a BRPOP pending")
    return received, channel


def _consuming(
    broker: RedisServer, settings: Settings, *bodies: dict[str, int]
) -> tuple[Connection, list[Message], Any]:
    """``bodies`` published, then received by a consumer whose next BRPOP is pending."""
    _publish(broker, settings, *bodies)
    connection = _connect(settings, broker)
    return connection, *_consume_until_brpop_pending(connection, len(bodies))


def _lose_connection(broker: RedisServer, connection: Connection, received: list[Message]) -> None:
    """Stop Redis, then do what Celery's consumer does when it notices (on_connection_error_after_connected):
    collect the connection (its transport forgets it), then close it. kombu's channel raised
    AttributeError in that close."""
    broker.stop()  # SIGTERM: Redis writes its AOF and closes every connection
    with pytest.raises(redis.ConnectionError):  # the lost connection surfaces outside the pending BRPOP
        received[0].ack()
    with contextlib.suppress(Exception):  # as Celery: whatever collect raises is ignored
        connection.collect(socket_timeout=1)
    connection.close()


def test_a_connection_lost_with_a_brpop_pending_closes_and_its_messages_can_be_acknowledged_later(
    broker: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    connection, received, channel = _consuming(broker, settings, {"n": 0}, {"n": 1})
    assert broker.client().hlen(UNACKED) == 2

    _lose_connection(broker, connection, received)
    assert channel.closed

    restarted = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
    try:
        assert restarted.client().hlen(UNACKED) == 2  # AOF kept them
        for message in received:  # the tasks finish after the reconnect: their acknowledgements arrive
            message.ack()
        assert restarted.client().hlen(UNACKED) == 0  # nothing waits for the visibility timeout
        with _connect(settings, restarted) as again:
            again.default_channel  # noqa: B018 - the first channel after the reconnect puts back what is left
        assert restarted.client().llen("default") == 0  # and finished tasks are not run again
    finally:
        restarted.stop()


def test_messages_the_closing_channel_could_not_put_back_go_back_on_their_queue_when_redis_answers(
    broker: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    connection, received, _ = _consuming(broker, settings, {"n": 0}, {"n": 2})
    _publish(broker, settings, {"n": 1})  # taken off the queue by the pending BRPOP; the reply waits unread
    wait_until(lambda: broker.client().llen("default") == 0, timeout=10, message="the BRPOP to take it")

    _lose_connection(broker, connection, received)  # n=0 finished: its acknowledgement fails
    assert len(received) == 2  # n=1 was never handed over; n=2 was and is not acknowledged (Celery drops it)

    restarted = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
    try:
        assert restarted.client().llen("default") == 0  # n=1 neither queued ...
        assert restarted.client().hlen(UNACKED) == 2  # ... nor unacknowledged: n=0 and n=2 are
        with _connect(settings, restarted) as again:
            again.default_channel  # noqa: B018 - the first channel after the reconnect puts back what it must
        bodies = sorted(json.loads(raw)["body"] for raw in restarted.client().lrange("default", 0, -1))
        assert bodies == sorted(base64.b64encode(body).decode() for body in (b'{"n": 1}', b'{"n": 2}'))
        assert restarted.client().hlen(UNACKED) == 0  # n=0's acknowledgement got through: it does not run again
    finally:
        restarted.stop()
