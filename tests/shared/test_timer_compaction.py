"""Cancelled timers leave a worker's event loop (shared/celery_extensions/timer_compaction.py): the prefork
pool's time-limit timers of finished tasks no longer wait in kombu's heap until their time comes."""

from __future__ import annotations

import time

from kombu.asynchronous.timer import Timer

from shared.celery_app import create_celery_app
from shared.celery_extensions import timer_compaction
from shared.settings import Settings


def test_compaction_drops_cancelled_entries_and_keeps_the_order_of_the_rest() -> None:
    timer = Timer()
    fired: list[int] = []
    due = time.monotonic() - 1  # every entry already due, in 7 steps of 1 ms
    entries = [timer.enter_at(timer.Entry(fired.append, (i,)), due + 0.001 * (i % 7)) for i in range(1000)]
    for i, entry in enumerate(entries):
        if i % 10:
            entry.cancel()
    queue = timer._queue

    assert timer_compaction.compact(timer) == 900
    assert len(timer) == 100
    assert timer._queue is queue  # the same list: the timer's iterator holds it
    assert timer_compaction.compact(timer) == 0

    for _ in range(100):
        _, entry = next(iter(timer))
        assert entry is not None
        entry()
    assert sorted(fired) == list(range(0, 1000, 10))
    assert [i % 7 for i in fired] == sorted(i % 7 for i in fired)  # due order kept
    assert len(timer) == 0


def test_every_worker_app_runs_the_compaction_in_its_consumer(settings: Settings) -> None:
    app = create_celery_app("finance", settings)
    assert timer_compaction.CompactTimers in app.steps["consumer"]
    app.close()
