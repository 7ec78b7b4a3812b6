"""What Flower and celery-exporter do with Celery's events, as one process of the events scenario.

Captures every event with ``app.events.Receiver`` into ``app.events.State`` (Flower's in-memory model)
and counts them. Every 0.2 s it writes its counters into the Redis hash ``bench:events`` and the receive
lag of each ``task-succeeded`` (receive time minus the event's timestamp) onto the list ``bench:lags``,
both in the database of ``--stats-url``.

    python -m bench.events_consumer --broker redis://... --stats-url redis://.../3
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

import redis
from celery import Celery

STATS_KEY = "bench:events"
LAGS_KEY = "bench:lags"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--stats-url", required=True)
    args = parser.parse_args(argv)

    app = Celery(broker=args.broker, set_as_current=False)
    state = app.events.State()
    stats = redis.Redis.from_url(args.stats_url)
    counts: dict[str | bytes, int] = {"events": 0, "succeeded": 0}
    lags: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        state.event(event)
        with lock:
            counts["events"] += 1
            if event.get("type") == "task-succeeded":
                counts["succeeded"] += 1
                lags.append(time.time() - float(event.get("timestamp") or 0))

    def publish() -> None:
        while not stop.wait(0.2):
            with lock:
                snapshot: dict[str | bytes, bytes | float | int | str] = dict(counts)
                batch = lags[:]
                lags.clear()
            pipe = stats.pipeline(transaction=False)
            pipe.hset(STATS_KEY, mapping=snapshot)
            if batch:
                pipe.rpush(LAGS_KEY, *(f"{lag:.6f}" for lag in batch))
            pipe.execute()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=publish, daemon=True).start()
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        stats.hset(STATS_KEY, "ready", 1)
        receiver.capture(limit=None, timeout=None, wakeup=True)


if __name__ == "__main__":
    main()
