"""Replaying a dead letter: its message back onto its queue, through kombu on the gateway's broker connection.

The message is published as it was kept (headers, body, content type and encoding, priority), on the
default exchange with the queue as routing key (a Redis list or a RabbitMQ queue of that name), with one
change: a message that names a task id gets a new one (``root_id`` too when it was the same), so the
replay is a task of its own in the history beside the old REJECTED or FAILURE row. The letter is taken
out of the store first (of two concurrent replays only one publishes) and put back if publishing fails.
A poison message (it killed its workers) is replayed only with ``force``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from shared import dead_letter_store
from shared.dead_letter_store import DeadLetter, StoredMessage


class NotReplayable(Exception):
    """The letter cannot (or may not, without force) go back onto its queue; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Replayed:
    id: str
    queue: str
    task_id: str | None  # the task id the replayed message carries (a new one)
    replay_of: str | None  # the task id the dead letter carried

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "queue": self.queue, "task_id": self.task_id, "replay_of": self.replay_of}


def check(letter: DeadLetter, force: bool) -> None:
    """NotReplayable when ``letter`` cannot go back (or is a poison message and ``force`` is not given)."""
    if not letter.envelope:
        raise NotReplayable("not-replayable", f"dead letter {letter.id} is not a message a worker could run")
    if letter.truncated:
        raise NotReplayable("not-replayable", f"dead letter {letter.id} was longer than the body limit and was cut")
    if not letter.queue:
        raise NotReplayable("not-replayable", f"dead letter {letter.id} does not say which queue it came from")
    if letter.poison and not force:
        raise NotReplayable(
            "poison-message",
            f"dead letter {letter.id} is a poison message: its workers died in each of its runs; "
            "replay it with force: true if the cause is fixed",
        )


def publish(celery: Celery, queue: str, message: StoredMessage, headers: dict[str, Any]) -> None:
    properties = {key: message.properties[key] for key in ("correlation_id", "reply_to") if message.properties.get(key)}
    priority = message.properties.get("priority")
    with celery.producer_or_acquire() as producer:
        producer.publish(
            message.body_bytes(),
            exchange="",
            routing_key=queue,
            headers=headers,
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8",
            delivery_mode=2,
            priority=priority if isinstance(priority, int) else 0,
            **properties,
        )


def replay(celery: Celery, client: redis.Redis[Any], letter_id: str, force: bool) -> Replayed:
    """Put a dead letter's message back onto its queue and forget the letter. KeyError when there is
    no such letter (any more), NotReplayable when it cannot go back."""
    letter = dead_letter_store.get(client, letter_id)
    if letter is None:
        raise KeyError(letter_id)
    check(letter, force)
    taken = dead_letter_store.take(client, letter_id)
    if taken is None:
        raise KeyError(letter_id)
    letter, message = taken
    headers = dict(message.headers)
    old_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    new_id = None
    if old_id is not None:
        new_id = str(uuid.uuid4())
        headers["id"] = new_id
        if headers.get("root_id") == old_id:
            headers["root_id"] = new_id
    assert letter.queue is not None  # check() made sure
    try:
        publish(celery, letter.queue, message, headers)
    except BaseException:
        dead_letter_store.put_back(client, letter)
        raise
    dead_letter_store.forget(client, [letter_id])
    return Replayed(letter.id, letter.queue, new_id, old_id)
