"""Cancelled timers out of the worker's event loop.

With the prefork pool, the worker's main process sets a timer for every task it hands to a child: the
task's soft time limit (25 minutes by default, ``shared/celery_app.py``). When the task ends the timer is
cancelled, but kombu's timer only marks the entry: it stays in the heap until it comes due, so the parent
holds every task of the last 25 minutes, about 500 bytes each (measured: +1.3 MB per 2,400 no-op tasks,
linear; 60 MB at 80 tasks/s before the first entries expire; celery/celery#1129, #1427). The heap also
grows the cost of every timer operation.

A consumer bootstep drops the cancelled entries every :data:`INTERVAL` seconds, in the event loop's own
thread (no lock needed), and re-registers itself whenever the consumer restarts its loop (a broker
reconnect), as Celery's own loop timers do.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import Celery, bootsteps

INTERVAL = 30.0  # seconds between two compactions


def compact(timer: Any) -> int:
    """Remove the cancelled entries from kombu ``timer``'s heap, in place (its iterator holds the list).
    Returns how many were removed."""
    queue: list[Any] = timer._queue
    live = [item for item in queue if not item[2].canceled]
    removed = len(queue) - len(live)
    if removed:
        heapq.heapify(live)
        queue[:] = live
    return removed


class CompactTimers(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: :func:`compact` the event loop's timer every :data:`INTERVAL` seconds."""

    label = "mallops timer compaction"

    def register_with_event_loop(self, consumer: Any, hub: Any) -> None:
        hub.call_repeatedly(INTERVAL, compact, hub.timer)


def install(app: Celery) -> None:
    """Add :class:`CompactTimers` to ``app``'s worker consumer (only workers with an event loop run it)."""
    app.steps["consumer"].add(CompactTimers)
