"""A finished task's acknowledgement, made by the command that stores its outcome.

With ``acks_late`` (every mallops task) Celery stores a task's SUCCESS, then acknowledges its message:
kombu's Redis ack emulation removes the message's ``unacked`` entry and index score (and mallops' delivery
holder, :func:`~shared.celery_extensions.redelivery.delivery_holder_key`) in a pipeline of its own, a round
trip a task. When the worker runs the task in its own process (the threads and solo pools: the process
holds the message) and the broker is a database of the result backend's Redis server (the default layout),
the result store's script removes them with the SUCCESS instead (:mod:`~shared.celery_extensions.result_store`)
and the acknowledgement that follows only does kombu's in-memory bookkeeping
(:meth:`shared.celery_extensions.dead_letters.QoS.ack`). Outcome and acknowledgement are then one atomic
write: a worker killed between them can no longer leave a finished task to run again.

A prefork child stores the outcome but its parent holds the message: nothing changes there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.cache import same_server
from shared.celery_extensions.redelivery import delivery_holder_key


@dataclass(frozen=True)
class OutcomeAck:
    """The message of a task this process is running, to acknowledge with the task's SUCCESS."""

    db: int  # the broker's database on the result backend's server
    unacked_index: str
    unacked: str
    holder: str
    tag: str
    qos: Any  # the channel's QoS (dead_letters.QoS)

    @property
    def keys(self) -> list[str]:
        return [self.unacked_index, self.unacked, self.holder]

    def done(self) -> None:
        """The script removed the message's entries: its acknowledgement has nothing left to write."""
        self.qos.acked_with_outcome.add(self.tag)


def find(task_id: str, backend_pool: Any) -> OutcomeAck | None:
    """The acknowledgement of ``task_id``'s message, when this process holds it (threads or solo pool) and
    will acknowledge it after its SUCCESS, its broker is on ``backend_pool``'s server and the channel is
    mallops' (its QoS skips what the script did); else None."""
    from celery.worker import state

    request = next((r for r in list(state.active_requests) if r.id == task_id), None)
    if request is None or request.acknowledged or not request.task.acks_late:
        return None
    message = request.message
    channel: Any = getattr(message, "channel", None)
    qos = getattr(channel, "qos", None)
    if not hasattr(qos, "acked_with_outcome") or getattr(channel, "global_keyprefix", None):
        return None
    pool = channel.client.connection_pool
    if not same_server(pool, backend_pool):
        return None
    tag = message.delivery_tag
    return OutcomeAck(
        int(pool.connection_kwargs.get("db", 0)),
        channel.unacked_index_key,
        channel.unacked_key,
        delivery_holder_key(tag),
        tag.decode() if isinstance(tag, bytes) else str(tag),
        qos,
    )
