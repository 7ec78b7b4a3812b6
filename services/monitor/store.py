"""Writing a batch of events into ``task_history`` and ``monitor_metrics`` in one transaction.

Rows are read for the batch's task ids, the events folded in (services.monitor.state), and written
back with one bulk upsert (``INSERT ... ON CONFLICT DO UPDATE``, SQLite and PostgreSQL dialects);
counter deltas are added with the same kind of upsert (``value = value + excluded.value``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from prometheus_client.utils import floatToGoString
from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from services.monitor.state import SENT_BIT, Deltas, apply_event, finish_row, new_row, parse_key, series_key
from shared.contracts import FINAL_STATES
from shared.models import MonitorMetric, TaskRecord

CHUNK = 500
HISTORY: Table = TaskRecord.__table__  # type: ignore[assignment]
METRICS: Table = MonitorMetric.__table__  # type: ignore[assignment]
ROW_COLUMNS = [c.name for c in HISTORY.columns]


def _upsert_history(session: Session) -> Any:
    """``INSERT ... ON CONFLICT (task_id) DO UPDATE`` of every column, built once per dialect."""
    name = session.get_bind().dialect.name
    stmt = _UPSERTS.get(name)
    if stmt is None:
        insert = _insert(session, HISTORY)
        stmt = _UPSERTS[name] = insert.on_conflict_do_update(
            index_elements=["task_id"],
            set_={col: insert.excluded[col] for col in ROW_COLUMNS if col != "task_id"},
        )
    return stmt


_UPSERTS: dict[str, Any] = {}


def _insert(session: Session, table: Table) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise RuntimeError(f"the monitor supports SQLite and PostgreSQL, not {name}")


def load_rows(session: Session, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(task_ids), CHUNK):
        chunk = task_ids[start : start + CHUNK]
        for mapping in session.execute(select(HISTORY).where(HISTORY.c.task_id.in_(chunk))).mappings():
            row = dict(mapping)
            row["_first_seen"] = None
            rows[row["task_id"]] = row
    return rows


def write_events(
    session: Session,
    events: Sequence[tuple[int, dict[str, Any]]],
    now: dt.datetime | None = None,
    buckets: dict[str, tuple[float, ...]] | None = None,
) -> Deltas:
    """Fold ``(sequence, event)`` pairs (in stream order) into the history; returns the metric deltas,
    which are already added to ``monitor_metrics`` in this transaction. ``buckets``: each histogram's."""
    now = now or dt.datetime.now(dt.UTC)
    deltas = Deltas(buckets=dict(buckets or {}))
    task_ids = list(
        dict.fromkeys(str(e["id"]) for _, e in events if e.get("id") and str(e.get("type", "")).startswith("task-"))
    )
    if task_ids:
        rows = load_rows(session, task_ids)
        touched: dict[str, dict[str, Any]] = {}
        for seq, event in events:
            task_id = event.get("id")
            if not task_id or not str(event.get("type", "")).startswith("task-"):
                continue
            row = rows.get(str(task_id))
            if row is None:
                row = rows[str(task_id)] = new_row(str(task_id))
            if apply_event(row, event, deltas, seq):
                touched[row["task_id"]] = row
        deltas.finished = [task_id for task_id in task_ids if answers_for(rows[task_id])]
        values = [finish_row(row, now) for row in touched.values()]
        if values:
            stmt = _upsert_history(session)
            for start in range(0, len(values), CHUNK):
                session.execute(stmt, values[start : start + CHUNK])
    add_metric_deltas(session, deltas)
    return deltas


def answers_for(row: dict[str, Any]) -> bool:
    """The history row can stand in for the gateway's metadata of its task: it is final and holds what
    the publish's task-sent event carries (arguments, retry_of, request id), which a worker's events can
    overtake. Every such row of a batch counts, not only those it changed, so that a batch redelivered
    after a crash between the commit and the XACK drops the metadata too."""
    return row.get("state") in FINAL_STATES and bool(int(row.get("event_mask") or 0) & (1 << SENT_BIT))


def add_metric_deltas(session: Session, deltas: Deltas) -> None:
    if not deltas.values:
        return
    stmt = _insert(session, METRICS)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"value": METRICS.c.value + stmt.excluded.value, "hostname": stmt.excluded.hostname},
    )
    params = [
        {"key": key, "hostname": deltas.hostnames.get(key), "value": value}
        for key, value in sorted(deltas.values.items())
    ]
    session.execute(stmt, params)


def load_metrics(session: Session) -> list[tuple[str, str | None, float]]:
    return [
        (key, host, float(value))
        for key, host, value in session.execute(select(METRICS.c.key, METRICS.c.hostname, METRICS.c.value))
        if not parse_key(key)[2].startswith(LAYOUT)
    ]


LAYOUT = "layout:"


def reset_changed_histograms(session: Session, buckets: dict[str, tuple[float, ...]]) -> list[str]:
    """Start afresh every histogram whose bucket bounds differ from the ones its counts were made with.

    Counts are kept per bucket index, so counts made with other bounds would be shown under the wrong
    ``le``: they are deleted and the new bounds recorded (a row ``[metric, [], "layout:<bounds>"]``).
    Prometheus sees those series reset, as after a restart. Returns the histograms started afresh."""
    changed = []
    for metric, bounds in buckets.items():
        layout = series_key(metric, (), LAYOUT + ",".join(floatToGoString(b) for b in bounds))  # type: ignore[no-untyped-call]
        prefix = json.dumps([metric], separators=(",", ":"))[:-1] + ","
        recorded = session.scalars(
            select(METRICS.c.key).where(
                METRICS.c.key.startswith(prefix, autoescape=True),
                METRICS.c.key.contains(f'"{LAYOUT}', autoescape=True),
            )
        ).all()
        if recorded == [layout]:
            continue
        session.execute(delete(METRICS).where(METRICS.c.key.startswith(prefix, autoescape=True)))
        session.execute(METRICS.insert().values(key=layout, hostname=None, value=1.0))
        changed.append(metric)
    return changed


def purge_hostname(session: Session, hostname: str) -> None:
    session.execute(delete(METRICS).where(METRICS.c.hostname == hostname))
