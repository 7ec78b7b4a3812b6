"""services.gateway.task_history on the run's real database: pagination, filters, statistics."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.gateway.task_history import (
    hourly_counts,
    overview_counts,
    percentile,
    query_history,
    record_dict,
    task_stats,
)
from shared.cursors import decode_cursor, encode_cursor
from shared.models import TaskRecord

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def _row(
    name: str,
    i: int,
    state: str,
    *,
    owner: str = "alice",
    runtime: float | None = None,
    wait: float | None = None,
    sent: dt.datetime | None = None,
) -> TaskRecord:
    sent = sent or T0 + dt.timedelta(seconds=i)
    return TaskRecord(
        task_id=f"{name}-{i:05d}",
        task_name=name,
        queue="default",
        state=state,
        owner=owner,
        retries=0,
        sent_at=sent,
        finished_at=sent + dt.timedelta(seconds=1) if state == "SUCCESS" else None,
        runtime=runtime,
        queue_wait=wait,
        last_event_seq=0,
        updated_at=sent,
    )


@pytest.fixture
def task_name(db: Session) -> str:
    return f"test.history.{uuid.uuid4().hex[:8]}"


def test_pages_walk_every_row_once_newest_first(db: Session, task_name: str) -> None:
    with db.begin_nested():
        # 25 rows, some sharing a sent_at so the task_id tie-break matters
        db.add_all(_row(task_name, i, "SUCCESS", sent=T0 + dt.timedelta(seconds=i // 3)) for i in range(25))
    seen: list[str] = []
    cursor = None
    with db.begin_nested():
        while True:
            page = query_history(db, task_name=task_name, cursor=cursor, limit=7)
            seen.extend(item["task_id"] for item in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert len(seen) == 25
    assert len(set(seen)) == 25
    expected = sorted((f"{task_name}-{i:05d}" for i in range(25)), key=lambda t: (int(t[-5:]) // 3, t), reverse=True)
    assert seen == expected


def test_several_states_are_merged_newest_first_across_pages(db: Session, task_name: str) -> None:
    """Several states are read one by one (each through its index) and merged: the same order and pages as
    one query would give, ties on sent_at broken by task_id, rows without sent_at last."""
    states = ("FAILURE", "REVOKED", "SUCCESS")
    rows = [_row(task_name, i, states[i % 3], sent=T0 + dt.timedelta(seconds=i // 4)) for i in range(30)]
    for row in rows[27:]:
        row.sent_at = None
    with db.begin_nested():
        db.add_all(rows)
    seen: list[str] = []
    cursor = None
    with db.begin_nested():
        while True:
            page = query_history(db, task_name=task_name, status="REVOKED,FAILURE", cursor=cursor, limit=4)
            seen.extend(item["task_id"] for item in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    wanted = [i for i in range(30) if states[i % 3] != "SUCCESS"]
    dated = sorted((i for i in wanted if i < 27), key=lambda i: (i // 4, f"{task_name}-{i:05d}"), reverse=True)
    undated = sorted((i for i in wanted if i >= 27), reverse=True)
    assert seen == [f"{task_name}-{i:05d}" for i in (*dated, *undated)]


def test_filters_by_status_owner_and_time(db: Session, task_name: str) -> None:
    with db.begin_nested():
        db.add_all(
            [
                _row(task_name, 1, "SUCCESS", owner="alice"),
                _row(task_name, 2, "FAILURE", owner="bob"),
                _row(task_name, 3, "SUCCESS", owner="bob"),
                _row(task_name, 4, "RETRY", owner="alice"),
            ]
        )
    with db.begin_nested():

        def ids(**kw: Any) -> list[str]:
            return [i["task_id"][-1] for i in query_history(db, task_name=task_name, **kw).items]

        assert ids(status="success") == ["3", "1"]
        assert ids(owner="bob") == ["3", "2"]
        assert ids(status="SUCCESS", owner="bob") == ["3"]
        assert ids(since=T0 + dt.timedelta(seconds=2), until=T0 + dt.timedelta(seconds=4)) == ["3", "2"]
        with pytest.raises(ValueError, match="unknown status"):
            query_history(db, status="exploded")
        with pytest.raises(ValueError, match="invalid cursor"):
            query_history(db, cursor="not-a-cursor!")
        with pytest.raises(ValueError, match="limit"):
            query_history(db, limit=0)


def test_short_name_finds_celery_name(db: Session) -> None:
    task_id = f"short-{uuid.uuid4().hex}"
    with db.begin_nested():
        row = _row("mallops.maintenance.long_running_task", 0, "SUCCESS", owner=task_id)
        row.task_id = task_id
        db.add(row)
    with db.begin_nested():
        items = query_history(db, task_name="long_running_task", owner=task_id).items
        assert [i["task_id"] for i in items] == [task_id]
        stored = db.get(TaskRecord, task_id)
        assert stored is not None
        record = record_dict(stored)
        assert record["state"] == "SUCCESS"
        assert record["sent_at"] == T0.isoformat()


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(T0, "abc")) == (T0, "abc")
    assert decode_cursor(encode_cursor(None, "abc")) == (None, "abc")


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile(values, 0.99) == pytest.approx(99.01)


def test_stats_over_a_window(db: Session, task_name: str) -> None:
    other = task_name + ".other"
    with db.begin_nested():
        db.add_all(_row(task_name, i, "SUCCESS", runtime=float(i + 1), wait=i / 100) for i in range(100))
        db.add_all(_row(task_name, 100 + i, "FAILURE", runtime=0.5) for i in range(20))
        db.add_all(_row(other, i, "SUCCESS", runtime=10.0, wait=1.0, owner="bob") for i in range(10))
        # outside the window
        db.add(_row(task_name, 999, "FAILURE", sent=T0 + dt.timedelta(hours=2)))
    until = T0 + dt.timedelta(minutes=10)
    with db.begin_nested():
        stats = task_stats(db, since=T0, until=until, task_name=task_name)
        assert set(stats["tasks"]) == {task_name}
        block = stats["tasks"][task_name]
        assert block == stats["overall"]
        assert block["total"] == 120
        assert block["counts"]["SUCCESS"] == 100
        assert block["counts"]["FAILURE"] == 20
        assert block["counts"]["STARTED"] == 0
        assert block["success_rate"] == pytest.approx(100 / 120)
        assert block["throughput_per_minute"] == pytest.approx(120 / 10)
        runtimes = sorted([float(i + 1) for i in range(100)] + [0.5] * 20)
        assert block["runtime"]["p50"] == pytest.approx(percentile(runtimes, 0.5))
        assert block["runtime"]["p99"] == pytest.approx(percentile(runtimes, 0.99))
        assert block["queue_wait"]["p50"] == pytest.approx(0.495)

        bob = task_stats(db, since=T0, until=until, owner="bob")
        assert bob["overall"]["total"] >= 10
        assert bob["tasks"][other]["runtime"]["p95"] == pytest.approx(10.0)
        with pytest.raises(ValueError, match="until"):
            task_stats(db, since=until, until=T0)


def test_stats_of_an_empty_window(db: Session, task_name: str) -> None:
    with db.begin_nested():
        stats = task_stats(db, since=T0, until=T0 + dt.timedelta(seconds=1), task_name=task_name)
    assert stats["overall"]["total"] == 0
    assert stats["overall"]["success_rate"] is None
    assert stats["overall"]["runtime"] == {"p50": None, "p95": None, "p99": None}
    assert stats["tasks"] == {}


def test_retried_and_hourly_counts(db: Session, task_name: str) -> None:
    owner = f"hourly-{uuid.uuid4().hex[:8]}"
    rows = [_row(task_name, i, "SUCCESS", owner=owner, sent=T0 + dt.timedelta(minutes=10 * i)) for i in range(9)]
    rows += [_row(task_name, 100 + i, "FAILURE", owner=owner, sent=T0 + dt.timedelta(minutes=61)) for i in range(2)]
    rows[0].retries = 2
    rows[-1].retries = 1
    with db.begin_nested():
        db.add_all(rows)
    until = T0 + dt.timedelta(hours=3)
    stats = task_stats(db, since=T0, until=until, owner=owner, percentiles=False)
    assert stats["overall"]["retried"] == 2
    assert stats["tasks"][task_name]["retried"] == 2
    assert stats["overall"]["runtime"]["p50"] is None  # not read without percentiles
    hours = hourly_counts(db, since=T0 + dt.timedelta(minutes=5), until=until, owner=owner)
    # from the whole hour of `since` on: 08:00 (6 sent), 09:00 (3 sent + 2 failed), 10:00 (none)
    assert [(h["hour"], h["sent"], h["failed"]) for h in hours] == [
        (T0, 6, 0),
        (T0 + dt.timedelta(hours=1), 5, 2),
        (T0 + dt.timedelta(hours=2), 0, 0),
    ]


@pytest.mark.parametrize("scope", ["owner", "owner_or_queue"])
def test_overview_counts_agree_with_stats_and_hourly_counts(db: Session, task_name: str, scope: str) -> None:
    """The overview's one query counts what task_stats (last hour, last day) and hourly_counts (from 23 h
    ago) count, in the same scope: an owner, or an owner and every task of a queue (a store manager)."""
    owner, queue = f"ov-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    now = T0 + dt.timedelta(days=2, minutes=17)
    states = ["SUCCESS", "FAILURE", "STARTED", "SENT", "REVOKED", "RECEIVED"]
    rows = [
        _row(task_name, i, states[i % len(states)], owner=owner, sent=now - dt.timedelta(minutes=23 * i + 1))
        for i in range(80)  # from a minute ago to 30 hours ago
    ]
    rows += [
        _row(task_name, 500 + i, "FAILURE", owner="someone-else", sent=now - dt.timedelta(minutes=7 * i + 2))
        for i in range(10)
    ]
    for row in rows[80:85]:
        row.queue = queue  # another owner's tasks on the store's queue
    for row in rows[::7]:
        row.retries = 1
    with db.begin_nested():
        db.add_all(rows)
    or_queue = queue if scope == "owner_or_queue" else None
    found = overview_counts(db, now=now, owner=owner, or_queue=or_queue)
    for name, window in (("hour", dt.timedelta(hours=1)), ("day", dt.timedelta(days=1))):
        stats = task_stats(db, since=now - window, until=now, owner=owner, or_queue=or_queue, percentiles=False)
        assert found[name]["counts"] == stats["overall"]["counts"]
        assert found[name]["retried"] == stats["overall"]["retried"]
    assert sum(found["day"]["counts"].values()) == (63 if scope == "owner" else 68)
    hours = hourly_counts(db, since=now - dt.timedelta(hours=23), until=now, owner=owner, or_queue=or_queue)
    assert found["hours"] == hours
    assert len(hours) == 24
    assert hours[-1]["hour"] == now.replace(minute=0)
