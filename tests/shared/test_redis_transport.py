"""mallops' Redis transport (shared.celery_extensions.dead_letters.RedisTransport) against a real redis-server
that is stopped and started again: a consumer whose connection is lost while a pop is pending closes cleanly,
and a message whose pop reply is lost is recorded in Redis by the pop itself and goes back on its queue
(shared.celery_extensions.reliable_pop; kombu's BRPOP loses it, the last test shows).

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
from queue import Empty
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue  # type: ignore[attr-defined]
from kombu.message import Message

from shared.celery_app import create_celery_app
from shared.contracts import priority_keys
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


def _publish(server: RedisServer, settings: Settings, *bodies: dict[str, int], priority: int = 0) -> None:
    with _connect(settings, server) as publisher:
        producer = publisher.Producer()
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key="default", declare=[QUEUE], priority=priority)


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
    _publish(broker, settings, {"n": 1})  # the consumer's loop does not turn again: it stays queued

    _lose_connection(broker, connection, received)  # n=0 finished: its acknowledgement fails
    assert len(received) == 2  # n=2 was handed over and is not acknowledged (Celery drops it)

    restarted = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
    try:
        assert restarted.client().llen("default") == 1  # n=1
        assert restarted.client().hlen(UNACKED) == 2  # n=0 and n=2
        with _connect(settings, restarted) as again:
            again.default_channel  # noqa: B018 - the first channel after the reconnect puts back what it must
        bodies = sorted(json.loads(raw)["body"] for raw in restarted.client().lrange("default", 0, -1))
        assert bodies == sorted(base64.b64encode(body).decode() for body in (b'{"n": 1}', b'{"n": 2}'))
        assert restarted.client().hlen(UNACKED) == 0  # n=0's acknowledgement got through: it does not run again
    finally:
        restarted.stop()


def _take_without_reading_the_reply(broker: RedisServer, settings: Settings, channel: Any) -> None:
    """Publish {"n": 1} (priority 5: a priority sub-list) to a consumer that waits; let its pop run in Redis
    and drop the connection before the reply is read: a reply lost as when Redis exits before sending it."""
    _publish(broker, settings, {"n": 1}, priority=5)
    link = channel.client.connection
    wait_until(lambda: link.can_read(timeout=0), timeout=10, message="the push of the write to the queue")
    with pytest.raises(Empty):
        channel._brpop_read()  # the push read, the pop sent
    assert channel._pop_state == "pending"
    wait_until(lambda: not broker.client().exists(*priority_keys("default")), timeout=10, message="the pop to run")
    link.disconnect()  # its reply unread


def test_a_pop_whose_reply_is_lost_leaves_the_message_recorded_and_it_goes_back_when_redis_answers(
    broker: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    connection, received, channel = _consuming(broker, settings, {"n": 0})
    assert channel._pop_state == "idle"  # the reliable pop: waiting for a write to its lists, no command pending
    _take_without_reading_the_reply(broker, settings, channel)
    # the same command that took n=1 off its list recorded it: in kombu's unacked hash and index, with the
    # consumer's marker naming it
    tags = {raw.decode() for raw in broker.client().hkeys(UNACKED)}
    assert len(tags) == 2
    assert broker.client().zcard("unacked_index") == 2
    marker = broker.client().get(channel._pop_marker)
    assert marker is not None
    assert marker.decode().split(" ")[1] in tags - {received[0].delivery_tag}

    broker.stop()  # SIGTERM: the AOF keeps the record
    with contextlib.suppress(Exception):
        connection.collect(socket_timeout=1)
    connection.close()
    restarted = start_redis(tmp_path / "redis", port=broker.port, appendonly=True)
    try:
        assert restarted.client().hlen(UNACKED) == 2
        with _connect(settings, restarted) as again:
            again.default_channel  # noqa: B018 - the first channel after the reconnect puts back the pop
        bodies = sorted(
            json.loads(raw)["body"] for key in priority_keys("default") for raw in restarted.client().lrange(key, 0, -1)
        )
        assert bodies == sorted(base64.b64encode(body).decode() for body in (b'{"n": 0}', b'{"n": 1}'))
        assert restarted.client().hlen(UNACKED) == 0
        again = _connect(settings, restarted)  # and a consumer gets each once
        try:
            consumed, _ = _consume_until_brpop_pending(again, 2)
            assert sorted(message.body for message in consumed) == [b'{"n": 0}', b'{"n": 1}']
        finally:
            again.close()
    finally:
        restarted.stop()


def test_kombus_brpop_loses_a_message_whose_reply_is_lost(broker: RedisServer, tmp_path: Path) -> None:
    """The window the reliable pop closes, with kombu's own transport (mallops' pop before): BRPOP takes the
    message off its list and nothing records it until its reply is read."""
    connection = Connection(f"{broker.url_base}/0")  # kombu's Redis transport
    try:
        Producer(connection).publish({"n": 0}, exchange=QUEUE.exchange, routing_key="default", declare=[QUEUE])
        _, channel = _consume_until_brpop_pending(connection, 1)
        Producer(connection).publish({"n": 1}, exchange=QUEUE.exchange, routing_key="default", priority=5)
        wait_until(lambda: not broker.client().exists(*priority_keys("default")), timeout=10, message="BRPOP")
        channel.client.connection.disconnect()  # the reply unread
        assert broker.client().hlen(UNACKED) == 1  # n=0 only: n=1 is nowhere in Redis
        assert json.loads(broker.client().hvals(UNACKED)[0])[0]["body"] == base64.b64encode(b'{"n": 0}').decode()
    finally:
        with contextlib.suppress(Exception):
            connection.close()
