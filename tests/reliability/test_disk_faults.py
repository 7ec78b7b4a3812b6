"""Storage faults (full suite only, ``scripts/faults``): the data directory full while exporting (a tmpfs of
a few kilobytes the test mounts; root only), and the database read-only for a while under the monitor."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from shared.db import session_scope
from shared.models import Export
from shared.settings import Settings
from tests.conftest import DEFAULT_PG
from tests.harness import drop_sessions
from tests.reliability.conftest import FULL_ONLY, FaultResults, FaultStack, record

EXPORT = "mallops.reports.export_data"
TEST = "mallops.maintenance.test_task"


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("size", FULL_ONLY)
def test_data_directory_full_while_exporting(
    fault_stack: FaultStack, demo_db: Settings, tmp_path: Path, size: str, fault_results: FaultResults
) -> None:
    started = time.monotonic()
    with tiny_tmpfs(tmp_path / "full-data", "32k") as data_dir:
        fault_stack.worker("reports", env={"MALLOPS_DATA_DIR": str(data_dir)})
        ids = [fault_stack.publish(EXPORT, queue="reports", dataset="sales", format="csv") for _ in range(3)]
        ledger = fault_stack.wait_finished(ids, timeout=120)
        left = sorted(p.name for p in (data_dir / "exports").rglob("*")) if (data_dir / "exports").exists() else []
        errors = {e.get("error", "")[:80] for e in ledger.events if e["type"] == "task-failed" and e.get("id") in ids}
    with session_scope(fault_stack.settings) as session:
        states = sorted(session.scalars(select(Export.status).where(Export.task_id.in_(ids))).all())
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
        "then FAILURE: "
        f"{'; '.join(sorted(errors))}; export rows {states}; files left in exports/: {left or 'none'}",
    )
    assert outcome.lost == 0
    assert failed == ids
    assert all("No space left" in e for e in errors), errors
    assert not [name for name in left if not name.startswith(".")], left  # no partial export file
    assert states == ["failed"] * len(ids)


@pytest.mark.parametrize("size", FULL_ONLY)
def test_database_read_only_under_the_monitor(fault_stack: FaultStack, size: str, fault_results: FaultResults) -> None:
    url = make_url(fault_stack.settings.sqlalchemy_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("read-only is made with PostgreSQL's default_transaction_read_only")
    admin_url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = url.database
    started = time.monotonic()
    fault_stack.worker()
    fault_stack.monitor()
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
    deadline = time.monotonic() + 120
    while len(fault_stack.history(ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = fault_stack.history(ids)
    counted = fault_stack.metric("celery_task_succeeded_total", name=TEST)
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
        f"after it {len(rows)}; celery_task_succeeded_total {counted:g}: the monitor kept its stream entries "
        "unacknowledged until its batches committed",
    )
    assert outcome.lost == 0
    assert len(rows) == len(ids)
    assert counted == len(ids)
