"""export_data through a real reports worker: the file's rows (parsed back), the ``exports`` row,
idempotent redelivery by task id, refused filters, and a soft time limit that leaves no partial file."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import Date, bindparam, delete, insert, select, text

from shared import models
from shared.db import session_scope
from shared.settings import Settings
from tests.harness import Process, wait_until
from tests.plugins.catalog_tasks import Submit

pytestmark = pytest.mark.integration


def export_row(settings: Settings, task_id: str) -> models.Export | None:
    with session_scope(settings) as session:
        return session.scalar(select(models.Export).where(models.Export.task_id == task_id))


def test_csv_export_of_filtered_sales(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    filters = {"store_id": 5, "date_from": "2026-10-01", "date_to": "2026-10-31"}
    result = submit_task("export_data", {"dataset": "sales", "format": "csv", "filters": filters}, owner="alice")
    summary = result.get(timeout=120)

    with session_scope(demo_db) as session:
        expected = session.execute(
            text(
                "SELECT s.id, s.store_id, st.code, s.day, s.amount, s.transactions FROM sales s "
                "JOIN stores st ON st.id = s.store_id WHERE s.store_id = 5 AND s.day >= :a AND s.day <= :b "
                "ORDER BY s.id"
            ).bindparams(bindparam("a", type_=Date()), bindparam("b", type_=Date())),
            {"a": dt.date(2026, 10, 1), "b": dt.date(2026, 10, 31)},
        ).all()
    assert len(expected) == 31

    row = export_row(demo_db, result.id)
    assert row is not None
    assert (row.status, row.owner, row.dataset, row.format, row.rows) == ("done", "alice", "sales", "csv", 31)
    assert row.filters == filters
    path = demo_db.exports_dir / str(row.file_name)
    assert row.size_bytes == path.stat().st_size
    assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row.expires_at is not None
    assert abs(row.expires_at - (dt.datetime.now(dt.UTC) + dt.timedelta(days=7))) < dt.timedelta(minutes=5)
    assert summary["file_name"] == row.file_name
    assert summary["rows"] == 31

    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, for Excel
    with path.open(newline="", encoding="utf-8-sig") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["id", "store_id", "store_code", "day", "amount", "transactions"]
    parsed = [(int(r[0]), int(r[1]), r[2], dt.date.fromisoformat(r[3]), Decimal(r[4]), int(r[5])) for r in lines[1:]]
    assert parsed == [
        (i, s, c, d if isinstance(d, dt.date) else dt.date.fromisoformat(d), Decimal(str(a)), t)
        for i, s, c, d, a, t in expected
    ]


def test_xlsx_export_of_paid_bills(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    result = submit_task("export_data", {"dataset": "bills", "format": "xlsx", "filters": {"status": "paid"}})
    summary = result.get(timeout=120)

    with session_scope(demo_db) as session:
        expected = session.execute(
            select(models.Bill.id, models.Bill.amount, models.Bill.paid_at)
            .where(models.Bill.status == "paid")
            .order_by(models.Bill.id)
        ).all()
    assert len(expected) > 20
    book = load_workbook(demo_db.exports_dir / summary["file_name"], read_only=True)
    try:
        sheet = book["bills"]
        rows = list(sheet.iter_rows(values_only=True))
    finally:
        book.close()
    header = list(rows[0])
    assert header[:3] == ["id", "store_id", "store_code"]
    assert header[-2:] == ["paid_at_utc", "paid_at_local"]
    body = rows[1:]
    assert summary["rows"] == len(body) == len(expected)
    assert [r[0] for r in body] == [e.id for e in expected]
    assert [Decimal(str(r[header.index("amount")])).quantize(Decimal("0.01")) for r in body] == [
        e.amount for e in expected
    ]
    assert all(r[header.index("status")] == "paid" for r in body)
    # XLSX has no time zones: instants are written as naive UTC, and beside them in mall time
    assert body[0][-2] == expected[0].paid_at.astimezone(dt.UTC).replace(tzinfo=None)
    assert body[0][-1] == expected[0].paid_at.astimezone(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)


def test_redelivered_export_is_not_redone(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    task_id = f"export-{uuid.uuid4()}"
    kwargs = {"dataset": "stores", "format": "csv"}
    first = submit_task("export_data", kwargs, task_id=task_id, owner="bob").get(timeout=120)
    path = demo_db.exports_dir / first["file_name"]
    stamp = path.stat().st_mtime_ns
    second = submit_task("export_data", kwargs, task_id=task_id, owner="bob").get(timeout=120)

    assert second == first
    assert path.stat().st_mtime_ns == stamp  # not rewritten
    with session_scope(demo_db) as session:
        assert session.scalar(text("SELECT COUNT(*) FROM exports WHERE task_id = :t"), {"t": task_id}) == 1
    assert first["rows"] == 20
    assert len(path.read_text().splitlines()) == 21


def test_a_filter_that_does_not_apply_fails_at_once(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    result = submit_task("export_data", {"dataset": "payments", "filters": {"status": "paid"}})
    with pytest.raises(Exception, match="filter status does not apply to dataset 'payments'"):
        result.get(timeout=120)
    assert result.state == "FAILURE"
    assert export_row(demo_db, result.id) is None


@pytest.fixture
def many_sales(demo_db: Settings) -> Iterator[int]:
    """150,000 extra sales rows (20 stores x 7,500 days before the demo history): an export that
    takes seconds, long enough for a soft time limit to hit it while it writes."""
    days = 7500
    first = dt.date(1990, 1, 1)
    rows: list[dict[str, Any]] = [
        {"store_id": store, "day": first + dt.timedelta(days=d), "amount": Decimal(1000 + d), "transactions": 3}
        for store in range(1, 21)
        for d in range(days)
    ]
    with session_scope(demo_db) as session:
        for i in range(0, len(rows), 10_000):
            session.execute(insert(models.Sale), rows[i : i + 10_000])
    yield len(rows)
    with session_scope(demo_db) as session:
        session.execute(delete(models.Sale).where(models.Sale.day < dt.date(2020, 1, 1)))


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_soft_time_limit_leaves_no_partial_file(
    demo_db: Settings,
    many_sales: int,
    running_worker: Callable[[str], Process],
    worker_factory: Callable[..., Process],
    submit_task: Submit,
    pool: str,
) -> None:
    worker = running_worker("reports")  # the reports worker's default pool: prefork
    if pool == "threads":
        # Celery enforces no time limit on the threads pool; mallops checks it at every progress update.
        # The run's shared worker stops, so that this one takes the tasks (it is started again when needed).
        worker.stop()
        worker = worker_factory("reports", "--pool=threads")
    with session_scope(demo_db) as session:
        total = session.scalar(text("SELECT COUNT(*) FROM sales"))
    assert total is not None
    assert total > many_sales
    # 5 s: past the export's start (its count and first progress report take seconds on a loaded machine,
    # and a limit that lands before the first row proves less) and well before its end (over 10 s)
    result = submit_task("export_data", {"dataset": "sales", "format": "xlsx"}, soft_time_limit=5)

    # it got as far as writing rows (and reporting progress) before the limit hit
    progress = wait_until(
        lambda: result.state == "PROGRESS" and result.info["current"] > 0 and result.info,
        timeout=60,
        interval=0.02,
        message="export progress",
    )
    assert progress["total"] == total
    # the limit ends it at once: no retry (a rollback failure on the interrupted connection once turned
    # it into a "transient" OperationalError and a 30 s retry)
    state = wait_until(
        lambda: result.state in ("FAILURE", "SUCCESS", "RETRY") and result.state,
        timeout=60,
        message="the soft time limit",
    )
    assert state == "FAILURE", result.info
    assert type(result.result).__name__ == "SoftTimeLimitExceeded"
    row = export_row(demo_db, result.id)
    assert row is not None
    assert (row.status, row.file_name, row.rows) == ("failed", None, None)
    leftovers = [p.name for p in demo_db.exports_dir.iterdir() if result.id in p.name]
    assert leftovers == []
    assert not list(demo_db.exports_dir.glob(".*.part"))

    # the interrupted worker process keeps working: both pool processes write rows and files again
    after = [submit_task("export_data", {"dataset": "stores"}) for _ in range(4)]
    assert [r.get(timeout=120)["rows"] for r in after] == [20, 20, 20, 20]
    assert [r.retries for r in after] == [0, 0, 0, 0]  # no "database is locked" from a half-read cursor
    assert {str(r.worker) for r in after} == {str(result.worker)}
    if pool == "threads":
        worker.stop()


def test_payments_export_uses_shanghai_days(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    summary = submit_task(
        "export_data", {"dataset": "payments", "filters": {"date_from": "2026-10-03", "date_to": "2026-10-09"}}
    ).get(timeout=120)
    start = dt.datetime(2026, 10, 2, 16, tzinfo=dt.UTC)  # 2026-10-03 00:00 in Shanghai
    end = dt.datetime(2026, 10, 9, 16, tzinfo=dt.UTC)  # 2026-10-10 00:00 in Shanghai
    with session_scope(demo_db) as session:
        expected = list(
            session.scalars(
                select(models.Payment.id)
                .where(models.Payment.paid_at >= start, models.Payment.paid_at < end)
                .order_by(models.Payment.id)
            )
        )
    assert expected
    with (demo_db.exports_dir / summary["file_name"]).open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["id"]) for r in rows] == expected
    assert all(start <= dt.datetime.fromisoformat(r["paid_at_utc"]) < end for r in rows)


def test_revenue_export_reads_what_finance_calculated(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("finance")
    running_worker("reports")
    submit_task("calculate_monthly_revenue", {"year": 2026, "month": 10}).get(timeout=120)
    summary = submit_task(
        "export_data",
        {"dataset": "revenue", "format": "xlsx", "filters": {"date_from": "2026-10-01", "date_to": "2026-10-31"}},
    ).get(timeout=120)
    with session_scope(demo_db) as session:
        expected = {
            (r.store_id, r.amount)
            for r in session.scalars(select(models.MonthlyRevenue).where(models.MonthlyRevenue.period == "2026-10"))
        }
    assert expected
    book = load_workbook(demo_db.exports_dir / summary["file_name"], read_only=True)
    try:
        header, *body = list(book["revenue"].iter_rows(values_only=True))
    finally:
        book.close()
    assert header[:2] == ("period", "store_id")
    assert {r[0] for r in body} == {"2026-10"}
    assert {(r[1], Decimal(str(r[5])).quantize(Decimal("0.01"))) for r in body} == expected


def test_xlsx_keeps_text_that_looks_like_a_formula_as_text(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    with session_scope(demo_db) as session:
        session.execute(text("UPDATE stores SET name = '=HYPERLINK(\"http://x\")' WHERE id = 2"))
    summary = submit_task("export_data", {"dataset": "stores", "format": "xlsx", "filters": {"store_id": 2}}).get(
        timeout=120
    )
    book = load_workbook(demo_db.exports_dir / summary["file_name"], read_only=True)
    try:
        _, row = list(book["stores"].iter_rows())
        assert row[2].value == '=HYPERLINK("http://x")'
        assert row[2].data_type == "s"
    finally:
        book.close()
