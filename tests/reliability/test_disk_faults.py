"""Storage faults (full suite only, ``scripts/faults``), each on Redis and on RabbitMQ as the broker:

- the data directory full while exporting (a tmpfs of a few kilobytes the test mounts; root only): the export
  fails cleanly, then works again once there is space;
- the database read-only for a while under the monitor (PostgreSQL's ``default_transaction_read_only``);
- the database out of space under the monitor: on PostgreSQL its tables moved to a tablespace on a small tmpfs
  the test mounts and fills; on SQLite the database file on such a tmpfs. Space comes back by dropping the
  filler."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from shared.db import migrate, session_scope
from shared.models import Export
from shared.settings import Settings
from tests.conftest import DEFAULT_PG
from tests.harness import drop_sessions
from tests.reliability.conftest import BROKERS, FULL_ONLY, FaultResults, FaultStack, record

EXPORT = "mallops.reports.export_data"
TEST = "mallops.maintenance.test_task"


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (made if missing) for the block; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    opts = f"size={size}" + (f",{options}" if options else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _grow(path: Path, size: str) -> None:
    """Give a mounted tmpfs more space (the fault ends)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_data_directory_full_while_exporting(
    fault_stack: FaultStack, demo_db: Settings, tmp_path: Path, size: str, fault_results: FaultResults
) -> None:
    started = time.monotonic()
    with tiny_tmpfs(tmp_path / "full-data", "32k") as data_dir:
        fault_stack.worker("reports", env={"MALLOPS_DATA_DIR": str(data_dir)})
        ids = [fault_stack.publish(EXPORT, queue="reports", dataset="sales", format="csv") for _ in range(3)]
        ledger = fault_stack.wait_finished(ids, timeout=120)
        left = _files(data_dir / "exports")
        errors = {e.get("error", "")[:80] for e in ledger.events if e["type"] == "task-failed" and e.get("id") in ids}
        _grow(data_dir, "64m")  # space is back: the same export works again, without restarting anything
        again = fault_stack.publish(EXPORT, queue="reports", dataset="sales", format="csv")
        after = fault_stack.wait_finished([again], timeout=120)
        files_after = _files(data_dir / "exports")
    with session_scope(fault_stack.settings) as session:
        states = sorted(session.scalars(select(Export.status).where(Export.task_id.in_(ids))).all())
        row = session.scalars(select(Export).where(Export.task_id == again)).one()
    failed = [i for i in ids if ledger.counts[i]["task-failed"]]
    outcome = record(
        fault_results,
        fault_stack,
        "data directory full while exporting (32 kB tmpfs)",
        size,
        len(ids),
        ids,
        started,
        notes=f"exports retried {sorted(ledger.counts[i]['task-retried'] for i in ids)} times (ENOSPC may clear), "
        f"then FAILURE: {'; '.join(sorted(errors))}; export rows {states}; files left in exports/: "
        f"{left or 'none'}; with space back (tmpfs remounted at 64 MB, nothing restarted) the next export: "
        f"{row.status}, {row.rows} rows, {row.size_bytes} bytes, files {len(files_after)}",
    )
    assert outcome.lost == 0
    assert failed == ids
    assert all("No space left" in e for e in errors), errors
    assert left == []  # no partial export file, not even a hidden temporary one
    assert states == ["failed"] * len(ids)
    assert after.counts[again]["task-succeeded"] == 1
    assert row.status == "done"
    assert Path(row.file_name or "").name in files_after
    assert (row.size_bytes or 0) > 32 * 1024  # more than the full tmpfs held


def _admin() -> Engine:
    url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


def _monitor_catches_up(stack: FaultStack, ids: list[str], timeout: float) -> int:
    """Wait until the history holds a row per id (or the deadline); the number of rows."""
    deadline = time.monotonic() + timeout
    while len(stack.history(ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(stack.history(ids))


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_database_read_only_under_the_monitor(fault_stack: FaultStack, size: str, fault_results: FaultResults) -> None:
    url = make_url(fault_stack.settings.sqlalchemy_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("read-only is made with PostgreSQL's default_transaction_read_only")
    admin = _admin()
    name = url.database
    started = time.monotonic()
    fault_stack.worker()
    fault_stack.monitor()
    before = fault_stack.metric("celery_task_succeeded_total", name=TEST)  # stored by earlier tests' monitors
    ids: list[str] = [fault_stack.publish(TEST, message=f"before {i}") for i in range(50)]
    fault_stack.wait_finished(ids, timeout=60)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
            drop_sessions(conn, name)
        ids += [fault_stack.publish(TEST, message=f"read-only {i}") for i in range(200)]
        fault_stack.wait_finished(ids, timeout=60)
        time.sleep(20)  # the fault itself: the database stays read-only this long
        during = len(fault_stack.history(ids))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off'))
            drop_sessions(conn, name)
        admin.dispose()
    ledger = fault_stack.wait_finished(ids, timeout=60)
    rows = _monitor_catches_up(fault_stack, ids, timeout=120)
    counted = fault_stack.metric("celery_task_succeeded_total", name=TEST) - before
    outcome = record(
        fault_results,
        fault_stack,
        "database read-only for 20 s under the monitor",
        size,
        1,
        ids,
        started,
        finished=ledger.succeeded(ids),
        notes=f"tasks not touching the database ran on; history rows during the fault {during} of {len(ids)}, "
        f"after it {rows}; celery_task_succeeded_total +{counted:g}: the monitor kept its stream entries "
        "unacknowledged until its batches committed",
    )
    assert outcome.lost == 0
    assert during < len(ids)  # the fault bit
    assert rows == len(ids)
    assert counted == len(ids)


# -- the database out of space --------------------------------------------------------------------------


@dataclass
class TightDatabase:
    """A database with little room: ``fill()`` takes what is left, ``free()`` gives it back."""

    how: str
    fill: Callable[[], str]
    free: Callable[[], None]
    database_url: str | None = None  # a database of its own (SQLite), else the stack's


def _postgres_tablespace(stack_url: str, mount: Path) -> Iterator[TightDatabase]:
    """The test database's tables and indexes moved to a tablespace on a tmpfs of their size plus 24 MB."""
    try:
        postgres = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user: the PostgreSQL server is not on this machine")
    url = make_url(stack_url)
    if url.host not in ("127.0.0.1", "localhost", None):
        pytest.skip("a tablespace on a tmpfs needs the PostgreSQL server on this machine")
    admin = _admin()
    db = create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    ts = f"mallops_full_{uuid.uuid4().hex[:8]}"
    with db.connect() as conn:
        megabytes = int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0) // 2**20 + 24
    options = f"uid={postgres.pw_uid},gid={postgres.pw_gid},mode=0700"
    with tiny_tmpfs(mount, f"{megabytes}m", options) as space:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE TABLESPACE {ts} LOCATION '{space}'"))
        try:
            with db.connect() as conn:
                conn.execute(text(f"ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE {ts}"))
                conn.execute(text(f"ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE {ts}"))

            def fill() -> str:
                with db.connect() as conn:
                    conn.execute(text(f"CREATE TABLE mallops_filler (v text) TABLESPACE {ts}"))
                    try:  # 2 million rows of about 60 bytes: more than the tmpfs holds
                        conn.execute(
                            text("INSERT INTO mallops_filler SELECT md5(g::text) FROM generate_series(1, 2000000) g")
                        )
                    except OperationalError as exc:
                        return str(exc.orig).splitlines()[0]
                pytest.fail("the filler fitted: the tablespace is not full")

            def free() -> None:
                with db.connect() as conn:
                    conn.execute(text("DROP TABLE IF EXISTS mallops_filler"))

            yield TightDatabase(f"tables in a tablespace on a {megabytes} MB tmpfs, filled", fill, free)
        finally:
            db.dispose()  # its pooled connection would be among the sessions dropped
            with admin.connect() as conn:
                drop_sessions(conn, url.database)
            with db.connect() as conn:
                conn.execute(text("SET lock_timeout = '30s'"))
                conn.execute(text("DROP TABLE IF EXISTS mallops_filler"))
                conn.execute(text(f"ALTER TABLE ALL IN TABLESPACE {ts} SET TABLESPACE pg_default"))
                conn.execute(text(f"ALTER INDEX ALL IN TABLESPACE {ts} SET TABLESPACE pg_default"))
            db.dispose()
            with admin.connect() as conn:
                conn.execute(text(f"DROP TABLESPACE IF EXISTS {ts}"))
            admin.dispose()


def _sqlite_on_tmpfs(settings: Settings, mount: Path) -> Iterator[TightDatabase]:
    """A fresh, migrated SQLite database whose file is on an 8 MB tmpfs."""
    with tiny_tmpfs(mount, "8m") as space:
        url = f"sqlite:///{space / 'mallops.db'}"
        migrate(settings.model_copy(update={"database_url": url}))
        filler = space / "filler"

        def fill() -> str:
            try:
                with filler.open("wb") as handle:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
            except OSError as exc:
                return str(exc)

        yield TightDatabase(
            "the SQLite file on an 8 MB tmpfs, filled", fill, lambda: filler.unlink(missing_ok=True), url
        )


@pytest.fixture
def tight_database(migrated: Settings) -> Iterator[TightDatabase]:
    """Set up before (so torn down after) the fault stack: the tables move back once its processes are gone."""
    mount = Path(tempfile.mkdtemp(prefix="mallops-full-db-"))
    try:
        if make_url(migrated.sqlalchemy_url).get_backend_name() == "postgresql":
            yield from _postgres_tablespace(migrated.sqlalchemy_url, mount)
        else:
            yield from _sqlite_on_tmpfs(migrated, mount)
    finally:
        with contextlib.suppress(OSError):
            mount.rmdir()


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_database_out_of_space_under_the_monitor(
    tight_database: TightDatabase, fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    stack = fault_stack
    if tight_database.database_url:
        stack.env = stack.env | {"MALLOPS_DATABASE_URL": tight_database.database_url}
        stack.settings = stack.settings.model_copy(update={"database_url": tight_database.database_url})
    started = time.monotonic()
    stack.worker()
    stack.monitor()
    before = stack.metric("celery_task_succeeded_total", name=TEST)  # stored by earlier tests' monitors
    ids = [stack.publish(TEST, message=f"before {i}") for i in range(50)]
    stack.wait_finished(ids, timeout=60)
    _monitor_catches_up(stack, ids, timeout=60)
    try:
        error = tight_database.fill()
        ids += [stack.publish(TEST, message=f"full {i}") for i in range(400)]
        stack.wait_finished(ids, timeout=90)
        time.sleep(20)  # the fault itself: no space this long
        during = len(stack.history(ids))
    finally:
        tight_database.free()
    ledger = stack.wait_finished(ids, timeout=60)
    rows = _monitor_catches_up(stack, ids, timeout=120)
    counted = stack.metric("celery_task_succeeded_total", name=TEST) - before
    outcome = record(
        fault_results,
        stack,
        "database out of space for 20 s under the monitor",
        size,
        1,
        ids,
        started,
        finished=ledger.succeeded(ids),
        notes=f"{tight_database.how} ({error}); tasks not touching the database ran on; history rows during "
        f"the fault {during} of {len(ids)}, after space came back {rows}; celery_task_succeeded_total "
        f"+{counted:g}: the monitor kept its stream entries unacknowledged until its batches committed",
    )
    assert outcome.lost == 0
    assert during < len(ids)  # the fault bit
    assert rows == len(ids)
    assert counted == len(ids)
