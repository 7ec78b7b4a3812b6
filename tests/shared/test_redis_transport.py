"""mallops' Redis transport (shared.dead_letters.RedisTransport) against a real redis-server that is stopped
and started again: a consumer whose connection is lost while a BRPOP is pending closes cleanly.

What Celery's consumer does on a lost connection is done here by hand, in the order it does it: the
connection is collected (its transport forgets the kombu connection), then closed. With kombu's own
channel that close raised ``AttributeError: 'NoneType' object has no attribute 'hostname'`` whenever a
message was unacknowledged, and the worker stopped (issue 12; celery/kombu#582). The worker-level test
under load is tests/reliability/test_redis_restart_under_load.py.
"""

from __future__ import annotations

import contextlib
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


def test_a_connection_lost_with_a_brpop_pending_closes_and_its_messages_can_be_acknowledged_later(
    broker: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    connection = _connect(settings, broker)
    queue = Queue("default", Exchange("default", type="direct"), routing_key="default")
    with connection.clone() as publisher:
        producer = publisher.Producer()
        for number in range(2):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key="default", declare=[queue])
    received: list[Message] = []
    consumer = Consumer(connection, [queue], callbacks=[lambda body, message: received.append(message)])
    consumer.qos(prefetch_count=3)  # room left: the channel sends its next BRPOP at once
    consumer.consume()
    # a second channel with an auto-delete fanout queue, as Celery's remote-control mailbox has
    mailbox = Consumer(
        connection.channel(), [Queue("mailbox", Exchange("mailbox", type="fanout"), auto_delete=True)], no_ack=True
    )
    mailbox.consume()

    def drain() -> int:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
        return len(received)

    wait_until(lambda: drain() == 2, timeout=10, message="both messages delivered")
    channel: Any = connection.default_channel
    wait_until(lambda: drain() == 2 and channel._in_poll, timeout=10, message="a BRPOP pending")
    assert broker.client().hlen(UNACKED) == 2

    broker.stop()  # SIGTERM: Redis writes its AOF and closes every connection
    with pytest.raises(redis.ConnectionError):  # the lost connection surfaces outside the pending BRPOP
        received[0].ack()
    assert channel._in_poll

    # Celery's Consumer.on_connection_error_after_connected
    with contextlib.suppress(Exception):  # as Celery: whatever collect raises is ignored
        connection.collect(socket_timeout=1)
    connection.close()  # kombu's channel raised AttributeError here
    assert channel.closed

    restarted = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
    try:
        assert restarted.client().hlen(UNACKED) == 2  # AOF kept them
        for message in received:  # the tasks finish after the reconnect: their acknowledgements arrive
            message.ack()
        assert restarted.client().hlen(UNACKED) == 0  # nothing waits for the visibility timeout
    finally:
        restarted.stop()
