"""Putting back the messages of dead workers on a Redis broker, also in workers without an event loop.

kombu's Redis transport keeps each delivered message in an ``unacked`` set until it is acknowledged; a
message whose worker died is put back on its queue by a sweep once ``MALLOPS_BROKER_VISIBILITY_TIMEOUT``
has passed. kombu sweeps periodically only from a worker's event loop (the prefork pool); a worker whose
pool has no event loop (the notifier's ``threads`` pool, ``solo``) sweeps only when it starts. A notifier
killed mid-send therefore left its e-mails in the set until some notifier started after the timeout
(found by tests/reliability). :func:`connect` gives such workers a thread that sweeps every
``MALLOPS_BROKER_RESTORE_INTERVAL`` seconds on a connection of its own. Sweeps hold kombu's Redis mutex,
so several workers sweeping never put a message back twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

log = logging.getLogger("mallops.redelivery")


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
    if extensions is None or extensions.sweeper is not None or pool is None:
        return
    if extensions.settings.broker_is_amqp or type(pool).__module__.endswith("prefork"):
        return  # RabbitMQ gives back a dead consumer's messages by itself; prefork sweeps from its event loop
    extensions.sweeper = Sweeper(sender.app, extensions.settings.broker_restore_interval)
    extensions.sweeper.start()


def _on_shutdown(sender: Any = None, **_: Any) -> None:
    from shared.celery_extensions.config import find_extensions

    extensions = find_extensions(getattr(sender, "app", None))
    if extensions is not None and extensions.sweeper is not None:
        extensions.sweeper.stopping.set()
        extensions.sweeper = None


def connect() -> None:
    """Start a :class:`Sweeper` when a worker without an event loop is ready (Redis brokers only)."""
    signals.worker_ready.connect(_on_ready, weak=False, dispatch_uid="mallops.redelivery.ready")
    signals.worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="mallops.redelivery.shutdown")
