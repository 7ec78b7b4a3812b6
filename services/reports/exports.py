"""Exports: one dataset, filtered, streamed to a CSV or XLSX file in the export store.

Rows are read in server-side batches (``yield_per``; a named cursor on PostgreSQL), never all at once,
and written to a temporary file that is renamed into place only when complete, so a failed or
interrupted export (an error, a soft time limit) leaves no partial file. The ``exports`` row is keyed
by the task id: a redelivered message whose export already finished returns the finished export.

Columns with a ``_utc`` suffix are UTC instants (ISO 8601 in CSV, naive UTC cells in XLSX, which has
no time zones); in XLSX each is followed by a ``_local`` column, the same instant in the mall's time zone
(``MALLOPS_TIMEZONE``). Date filters are inclusive local days of the mall's time zone.

Files are for people: CSV in UTF-8 with a byte-order mark (Excel on a Chinese Windows reads it right),
XLSX with a bold, frozen header row, a filter on it, column widths, amounts as numbers with two decimals.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from services.reports.upserts import insert_ignoring
from shared import models
from shared.db import get_engine, session_scope
from shared.errors import PermanentError
from shared.files import atomic_path, atomic_write, sha256_of
from shared.settings import Settings

log = logging.getLogger("mallops.reports.exports")

BATCH = 1000
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Dataset:
    name: str
    columns: tuple[str, ...]
    filters: frozenset[str]  # which ExportFilters fields apply

    def query(self, filters: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
        return _QUERIES[self.name](filters, zone)


def _day_start(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


def _bills(f: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
    b = models.Bill
    stmt = (
        select(
            b.id,
            b.store_id,
            models.Store.code,
            b.tenant_id,
            models.Tenant.name,
            b.period,
            b.kind,
            b.amount,
            b.issued_on,
            b.due_date,
            b.status,
            b.overdue_since,
            b.paid_at,
        )
        .join(models.Store, models.Store.id == b.store_id)
        .join(models.Tenant, models.Tenant.id == b.tenant_id)
        .order_by(b.id)
    )
    if f.get("date_from"):
        stmt = stmt.where(b.issued_on >= f["date_from"])
    if f.get("date_to"):
        stmt = stmt.where(b.issued_on <= f["date_to"])
    if f.get("store_id"):
        stmt = stmt.where(b.store_id == f["store_id"])
    if f.get("store_ids"):
        stmt = stmt.where(b.store_id.in_(f["store_ids"]))
    if f.get("status"):
        stmt = stmt.where(b.status == f["status"])
    return stmt


def _payments(f: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
    p = models.Payment
    stmt = (
        select(p.id, p.bill_id, p.store_id, models.Store.code, models.Bill.period, p.amount, p.method, p.paid_at)
        .join(models.Store, models.Store.id == p.store_id)
        .join(models.Bill, models.Bill.id == p.bill_id)
        .order_by(p.id)
    )
    if f.get("date_from"):
        stmt = stmt.where(p.paid_at >= _day_start(f["date_from"], zone))
    if f.get("date_to"):
        stmt = stmt.where(p.paid_at < _day_start(f["date_to"] + dt.timedelta(days=1), zone))
    if f.get("store_id"):
        stmt = stmt.where(p.store_id == f["store_id"])
    if f.get("store_ids"):
        stmt = stmt.where(p.store_id.in_(f["store_ids"]))
    return stmt


def _revenue(f: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
    r = models.MonthlyRevenue
    stmt = (
        select(
            r.period, r.store_id, models.Store.code, models.Store.name, r.category, r.amount, r.payments, r.computed_at
        )
        .join(models.Store, models.Store.id == r.store_id)
        .order_by(r.period, r.store_id)
    )
    if f.get("date_from"):
        stmt = stmt.where(r.period >= f"{f['date_from']:%Y-%m}")
    if f.get("date_to"):
        stmt = stmt.where(r.period <= f"{f['date_to']:%Y-%m}")
    if f.get("store_id"):
        stmt = stmt.where(r.store_id == f["store_id"])
    if f.get("store_ids"):
        stmt = stmt.where(r.store_id.in_(f["store_ids"]))
    return stmt


def _stores(f: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
    s = models.Store
    stmt = select(s.id, s.code, s.name, s.category, s.floor, s.area_sqm, s.opened_on).order_by(s.id)
    if f.get("date_from"):
        stmt = stmt.where(s.opened_on >= f["date_from"])
    if f.get("date_to"):
        stmt = stmt.where(s.opened_on <= f["date_to"])
    if f.get("store_id"):
        stmt = stmt.where(s.id == f["store_id"])
    if f.get("store_ids"):
        stmt = stmt.where(s.id.in_(f["store_ids"]))
    return stmt


def _sales(f: Mapping[str, Any], zone: ZoneInfo) -> Select[*tuple[Any, ...]]:
    s = models.Sale
    stmt = (
        select(s.id, s.store_id, models.Store.code, s.day, s.amount, s.transactions)
        .join(models.Store, models.Store.id == s.store_id)
        .order_by(s.id)
    )
    if f.get("date_from"):
        stmt = stmt.where(s.day >= f["date_from"])
    if f.get("date_to"):
        stmt = stmt.where(s.day <= f["date_to"])
    if f.get("store_id"):
        stmt = stmt.where(s.store_id == f["store_id"])
    if f.get("store_ids"):
        stmt = stmt.where(s.store_id.in_(f["store_ids"]))
    return stmt


_QUERIES: dict[str, Callable[[Mapping[str, Any], ZoneInfo], Select[*tuple[Any, ...]]]] = {
    "bills": _bills,
    "payments": _payments,
    "revenue": _revenue,
    "stores": _stores,
    "sales": _sales,
}
_DATES = frozenset({"date_from", "date_to", "store_id", "store_ids"})
DATASETS: dict[str, Dataset] = {
    "bills": Dataset(
        "bills",
        (
            "id",
            "store_id",
            "store_code",
            "tenant_id",
            "tenant_name",
            "period",
            "kind",
            "amount",
            "issued_on",
            "due_date",
            "status",
            "overdue_since_utc",
            "paid_at_utc",
        ),
        _DATES | {"status"},
    ),
    "payments": Dataset(
        "payments",
        ("id", "bill_id", "store_id", "store_code", "bill_period", "amount", "method", "paid_at_utc"),
        _DATES,
    ),
    "revenue": Dataset(
        "revenue",
        ("period", "store_id", "store_code", "store_name", "category", "amount", "payments", "computed_at_utc"),
        _DATES,
    ),
    "stores": Dataset("stores", ("id", "code", "name", "category", "floor", "area_sqm", "opened_on"), _DATES),
    "sales": Dataset("sales", ("id", "store_id", "store_code", "day", "amount", "transactions"), _DATES),
}


def get_dataset(name: str, filters: Mapping[str, Any]) -> Dataset:
    """The dataset ``name``; a filter that does not apply to it is refused (PermanentError)."""
    dataset = DATASETS.get(name)
    if dataset is None:
        raise PermanentError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    given = {key for key, value in filters.items() if value is not None}
    if unknown := sorted(given - dataset.filters):
        raise PermanentError(f"filter {', '.join(unknown)} does not apply to dataset {name!r}")
    if filters.get("date_from") and filters.get("date_to") and filters["date_from"] > filters["date_to"]:
        raise PermanentError("date_from is after date_to")
    return dataset


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


TWO_DECIMAL_COLUMNS = frozenset(("amount", "amount_due", "area_sqm"))  # amounts (and floor areas)
MONEY_FORMAT = "#,##0.00"
TIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
DATE_FORMAT = "yyyy-mm-dd"


def xlsx_columns(columns: Sequence[str]) -> list[str]:
    """The XLSX header: every ``<name>_utc`` column followed by ``<name>_local`` (mall time)."""
    result: list[str] = []
    for name in columns:
        result.append(name)
        if name.endswith("_utc"):
            result.append(name.removesuffix("_utc") + "_local")
    return result


def _column_width(name: str) -> float:
    if name.endswith(("_utc", "_local")):
        return 20
    if name in TWO_DECIMAL_COLUMNS:
        return 14
    if name.endswith("name"):
        return 26
    return max(len(name) + 3, 9)


def _xlsx_cells(sheet: Any, columns: Sequence[str], row: Sequence[Any], zone: ZoneInfo) -> list[Any]:
    """One row's cells: numbers and times with their formats, ``_local`` times beside the UTC ones."""
    from openpyxl.cell import WriteOnlyCell

    cells: list[Any] = []
    for name, value in zip(columns, row, strict=True):
        if isinstance(value, dt.datetime):
            instant = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            for shown in (instant.astimezone(dt.UTC), instant.astimezone(zone)):
                cell = WriteOnlyCell(sheet, shown.replace(tzinfo=None))
                cell.number_format = TIME_FORMAT
                cells.append(cell)
            continue
        if value is None and name.endswith("_utc"):
            cells += [None, None]
            continue
        if isinstance(value, str) and value.startswith("="):
            cell = WriteOnlyCell(sheet, value)  # openpyxl would store it as a formula; data stays text
            cell.data_type = "s"
        elif name in TWO_DECIMAL_COLUMNS and value is not None:
            cell = WriteOnlyCell(sheet, Decimal(str(value)).quantize(Decimal("0.01")))
            cell.number_format = MONEY_FORMAT
        elif isinstance(value, dt.date):
            cell = WriteOnlyCell(sheet, value)
            cell.number_format = DATE_FORMAT
        else:
            cells.append(value)
            continue
        cells.append(cell)
    return cells


def _xlsx_sheet(book: Any, title: str, columns: Sequence[str]) -> Any:
    """A write-only sheet with its widths, frozen bold header row and filter (set before any row)."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    sheet = book.create_sheet(title)
    header = xlsx_columns(columns)
    for index, name in enumerate(header, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = _column_width(name)
    sheet.freeze_panes = "A2"
    bold = Font(bold=True)
    cells = []
    for name in header:
        cell = WriteOnlyCell(sheet, name)
        cell.font = bold
        cells.append(cell)
    sheet.append(cells)
    return sheet


@contextlib.contextmanager
def stream_rows(
    session: Session, dataset: Dataset, filters: Mapping[str, Any], zone: ZoneInfo
) -> Iterator[tuple[int, Iterator[Sequence[Sequence[Any]]]]]:
    """The number of rows, and the rows in batches of :data:`BATCH` read with a server-side cursor.

    The cursor is closed however the caller leaves, so an interrupted export (a soft time limit raised
    mid-fetch) never returns a connection to the pool with a statement still open on it.
    """
    stmt = dataset.query(filters, zone)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    result = session.execute(stmt.execution_options(yield_per=BATCH))
    try:
        yield total, (list(part) for part in result.partitions())
    finally:
        result.close()


def write_file(
    session: Session,
    path: Path,
    dataset: Dataset,
    fmt: str,
    filters: Mapping[str, Any],
    zone: ZoneInfo,
    progress: Progress,
) -> int:
    """Write the dataset to ``path`` (atomically) and return the number of data rows."""
    if fmt not in ("csv", "xlsx"):
        raise PermanentError(f"unknown format {fmt!r}; choose csv or xlsx")
    with stream_rows(session, dataset, filters, zone) as (total, batches):
        return _write(path, dataset, fmt, total, batches, progress, zone)


def _write(
    path: Path,
    dataset: Dataset,
    fmt: str,
    total: int,
    batches: Iterator[Sequence[Sequence[Any]]],
    progress: Progress,
    zone: ZoneInfo,
) -> int:
    written = 0
    if fmt == "csv":
        with atomic_write(path, encoding="utf-8-sig") as handle:
            writer = csv.writer(handle)
            writer.writerow(dataset.columns)
            progress(0, total)
            for batch in batches:
                writer.writerows([_csv_cell(v) for v in row] for row in batch)
                written += len(batch)
                progress(written, total)
    else:
        from openpyxl import Workbook  # only exports need it
        from openpyxl.utils import get_column_letter

        with atomic_path(path) as tmp:
            book = Workbook(write_only=True)
            sheet = _xlsx_sheet(book, dataset.name, dataset.columns)
            progress(0, total)
            for batch in batches:
                for row in batch:
                    sheet.append(_xlsx_cells(sheet, dataset.columns, row, zone))
                written += len(batch)
                progress(written, total)
            last = get_column_letter(len(xlsx_columns(dataset.columns)))
            sheet.auto_filter.ref = f"A1:{last}{written + 1}"  # written at the sheet's end, after the rows
            book.save(tmp)
    return written


def file_name(dataset: str, fmt: str, task_id: str) -> str:
    return f"{dataset}-{task_id}.{fmt}"


def summary(row: models.Export) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "dataset": row.dataset,
        "format": row.format,
        "status": row.status,
        "file_name": row.file_name,
        "rows": row.rows,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
    }


def _json_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in filters.items() if v is not None}


def start(
    session: Session,
    *,
    task_id: str,
    owner: str | None,
    dataset: str,
    fmt: str,
    filters: Mapping[str, Any],
    exports_dir: Path,
) -> dict[str, Any] | None:
    """Record the export as running; if this task id already finished it, return that export instead."""
    row = session.scalar(select(models.Export).where(models.Export.task_id == task_id))
    if row is not None and row.status == "done" and row.file_name and (exports_dir / row.file_name).exists():
        return summary(row)
    insert_ignoring(
        session,
        models.Export,
        [
            {
                "task_id": task_id,
                "owner": owner,
                "dataset": dataset,
                "format": fmt,
                "filters": _json_filters(filters),
                "status": "running",
                "created_at": models.utcnow(),
            }
        ],
        keys=["task_id"],
    )
    session.execute(
        update(models.Export)
        .where(models.Export.task_id == task_id)
        .values(status="running", file_name=None, rows=None, size_bytes=None, sha256=None, expires_at=None)
    )
    return None


def run_export(
    settings: Settings,
    *,
    task_id: str,
    owner: str | None,
    dataset: str,
    fmt: str,
    filters: Mapping[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """Export ``dataset`` for task ``task_id``: record it, stream it to a file, record the result."""
    spec = get_dataset(dataset, filters)
    exports_dir = settings.exports_dir
    with session_scope(settings) as session:
        done = start(
            session, task_id=task_id, owner=owner, dataset=dataset, fmt=fmt, filters=filters, exports_dir=exports_dir
        )
    if done is not None:
        log.info("export %s already finished; returning it", task_id)
        return done
    name = file_name(dataset, fmt, task_id)
    path = exports_dir / name
    try:
        with session_scope(settings) as session:
            rows = write_file(session, path, spec, fmt, filters, ZoneInfo(settings.timezone), progress)
    except BaseException as exc:
        if isinstance(exc, SoftTimeLimitExceeded):
            # interrupted at an arbitrary point: do not reuse any connection it may have left mid-statement
            get_engine(settings).dispose()
        try:
            with session_scope(settings) as session:
                session.execute(update(models.Export).where(models.Export.task_id == task_id).values(status="failed"))
        except Exception:
            log.exception("could not mark export %s failed", task_id)
        raise
    with session_scope(settings) as session:
        session.execute(
            update(models.Export)
            .where(models.Export.task_id == task_id)
            .values(
                status="done",
                file_name=name,
                rows=rows,
                size_bytes=path.stat().st_size,
                sha256=sha256_of(path),
                expires_at=models.utcnow() + dt.timedelta(days=settings.export_ttl_days),
            )
        )
        row = session.scalar(select(models.Export).where(models.Export.task_id == task_id))
        assert row is not None
        return summary(row)
