"""Maintenance tasks through a real maintenance worker: backups that restore, cache keys removed by
prefix (others kept), expired data and its files deleted."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, text
from sqlalchemy.engine import make_url

from services.maintenance import backups
from shared import models
from shared.cache import redis_client
from shared.db import session_scope
from shared.restore import fingerprint
from shared.settings import Settings
from tests.harness import Process
from tests.plugins.catalog_tasks import Submit

pytestmark = pytest.mark.integration


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            counts = {
                table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in models.Base.metadata.sorted_tables
            }
            counts["alembic_version"] = conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar_one()
            return counts
    finally:
        engine.dispose()


def mallops_restore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mallops", "restore", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_restore_drill_backup_restored_into_a_new_database_has_every_row(
    demo_db: Settings, running_worker: Callable[[str], Process], submit_task: Submit, tmp_path: Path
) -> None:
    """The drill: back up the demo mall through a real worker (backup_database's own format), restore it
    with `mallops restore` into a new database, and compare every table's row count and checksum; a
    database with tables is refused without --force and replaced with it."""
    running_worker("maintenance")
    result = submit_task("backup_database").get(timeout=300)

    path = Path(result["path"])
    assert path.parent == demo_db.backups_dir
    assert path.is_file()
    assert result["size"] == path.stat().st_size > 0
    assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    original = row_counts(demo_db.sqlalchemy_url)
    assert original["stores"] == 20
    assert original["sales"] > 1000
    source = fingerprint(demo_db.sqlalchemy_url)

    url = make_url(demo_db.sqlalchemy_url)
    sqlite = url.get_backend_name() == "sqlite"
    assert path.suffix == (".sqlite3" if sqlite else ".dump")
    name = f"mallops_restore_{uuid.uuid4().hex[:10]}"
    target = f"sqlite:///{tmp_path / 'restored.db'}" if sqlite else url.set(database=name).render_as_string(False)
    try:
        done = mallops_restore(str(path), "--into", target, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {t: {"rows": p.rows, "sha256": p.sha256} for t, p in source.items()}
        assert fingerprint(target) == source
        assert row_counts(target) == original
        assert len(source) >= len(models.Base.metadata.tables) + 1  # every table, alembic_version too

        refused = mallops_restore(str(path), "--into", target)
        assert refused.returncode == 2
        assert refused.stderr.startswith("mallops: the database has")
        assert refused.stderr.count("\n") == 1
        other_kind = tmp_path / ("backup.dump" if sqlite else "backup.sqlite3")
        other_kind.write_bytes(path.read_bytes())
        wrong = mallops_restore(str(other_kind), "--into", target, "--force")
        assert wrong.returncode == 2
        assert "is not a" in wrong.stderr

        with create_engine(target).begin() as conn:  # damage the copy, then replace it
            conn.execute(delete(models.Sale))
        assert fingerprint(target) != source
        forced = mallops_restore(str(path), "--into", target, "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.strip().endswith(f"restored {len(source)} tables, {sum(original.values())} rows")
        assert fingerprint(target) == source
    finally:
        if not sqlite:
            admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def test_backups_keep_only_the_newest(
    migrated: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("maintenance")
    made = [submit_task("backup_database", {"keep": 2}).get(timeout=300)["path"] for _ in range(3)]
    remaining = sorted(str(p) for p in backups.existing_backups(migrated.backups_dir))
    assert remaining == sorted(made[1:])
    assert not Path(made[0]).exists()


def test_cleanup_cache_deletes_by_prefix_and_keeps_the_rest(
    migrated: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("maintenance")
    client = redis_client(migrated)
    tag = uuid.uuid4().hex[:8]
    cached = [f"mallops:cache:{tag}:{i}" for i in range(1200)]  # more than one SCAN page
    kept = [f"mallops:cachex:{tag}", f"mallops:other:{tag}", f"elsewhere:mallops:cache:{tag}", f"mallops:redbeat:{tag}"]
    client.mset(dict.fromkeys(cached + kept, "1"))
    try:
        result = submit_task("cleanup_cache").get(timeout=120)
        assert result["deleted"] >= 1200
        assert client.exists(*cached) == 0
        assert client.exists(*kept) == len(kept)

        # a prefix that reaches platform state deletes none of it
        result = submit_task("cleanup_cache", {"prefix": "mallops:redbeat:"}).get(timeout=120)
        assert result["deleted"] == 0
        assert result["protected"] >= 1
        assert client.exists(f"mallops:redbeat:{tag}") == 1

        refused = submit_task("cleanup_cache", {"prefix": "elsewhere:"})
        with pytest.raises(Exception, match="prefix"):
            refused.get(timeout=120)
        assert client.exists(f"elsewhere:mallops:cache:{tag}") == 1
    finally:
        client.delete(*kept)


def test_cleanup_expired_data_deletes_rows_and_files_past_retention(
    migrated: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    settings = migrated
    running_worker("maintenance")
    now = dt.datetime.now(dt.UTC)
    tag = uuid.uuid4().hex[:8]
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    (settings.reports_dir / "daily").mkdir(parents=True, exist_ok=True)
    expired_file = settings.exports_dir / f"sales-{tag}-old.csv"
    fresh_file = settings.exports_dir / f"sales-{tag}-new.csv"
    old_report = [f"daily/daily-{tag}-old.csv", f"daily/daily-{tag}-old.html"]
    new_report = [f"daily/daily-{tag}-new.csv", f"daily/daily-{tag}-new.html"]
    for name in [expired_file, fresh_file] + [settings.reports_dir / n for n in old_report + new_report]:
        name.write_text("x\n")
    stale_part = settings.exports_dir / f".sales-{tag}.csv.part"
    stale_part.write_text("half")
    two_days_ago = (now - dt.timedelta(days=2)).timestamp()
    os.utime(stale_part, (two_days_ago, two_days_ago))

    def export(
        task_id: str, file_name: str | None, expires: dt.datetime | None, created: dt.datetime
    ) -> dict[str, object]:
        return {
            "task_id": task_id,
            "owner": "t",
            "dataset": "sales",
            "format": "csv",
            "filters": {},
            "status": "done",
            "file_name": file_name,
            "expires_at": expires,
            "created_at": created,
        }

    with session_scope(settings) as session:
        session.execute(
            insert(models.Export),
            [
                export(f"{tag}-expired", expired_file.name, now - dt.timedelta(hours=1), now - dt.timedelta(days=8)),
                export(f"{tag}-fresh", fresh_file.name, now + dt.timedelta(days=6), now - dt.timedelta(days=1)),
                export(f"{tag}-stuck", None, None, now - dt.timedelta(days=30)),
            ],
        )
        old_start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=int(tag, 16) % 100_000)
        session.execute(
            insert(models.Report),
            [
                {
                    "kind": "daily",
                    "period_start": old_start,
                    "period_end": old_start + dt.timedelta(days=1),
                    "data": {},
                    "csv_path": old_report[0],
                    "html_path": old_report[1],
                },
                {
                    "kind": "daily",
                    "period_start": now - dt.timedelta(days=3) + dt.timedelta(seconds=int(tag, 16) % 1000),
                    "period_end": now - dt.timedelta(days=2),
                    "data": {},
                    "csv_path": new_report[0],
                    "html_path": new_report[1],
                },
            ],
        )
        session.execute(
            insert(models.TaskRecord),
            [
                {
                    "task_id": f"{tag}-{age}",
                    "task_name": "mallops.maintenance.test_task",
                    "state": "SUCCESS",
                    "updated_at": now - dt.timedelta(days=age),
                }
                for age in (31, 29)
            ],
        )
        session.execute(
            insert(models.Notification),
            [
                {
                    "email": "a@example.com",
                    "subject": f"{tag}-{age}",
                    "message": "m",
                    "created_at": now - dt.timedelta(days=age),
                }
                for age in (31, 29)
            ],
        )
        session.execute(
            insert(models.AccessLog),
            [
                {
                    "request_id": f"{tag}-{age}",
                    "ts": now - dt.timedelta(days=age),
                    "method": "GET",
                    "path": "/",
                    "status": 200,
                    "duration_ms": 1.0,
                }
                for age in (91, 89)
            ],
        )
        session.execute(
            insert(models.AuditEntry),
            [
                {
                    "at": now - dt.timedelta(days=age),
                    "actor": tag,
                    "action": f"{tag}-{age}",
                    "outcome": "ok",
                    "details": {},
                }
                for age in (366, 364)
            ],
        )

        session.execute(
            insert(models.DeferredTask),
            [
                {
                    "task_id": f"{tag}-{state}-{age}",
                    "task_name": "test_task",
                    "queue": "default",
                    "owner": "t",
                    "args": [],
                    "kwargs": {},
                    "payload": {},
                    "eta": now + dt.timedelta(days=1),
                    "state": state,
                    "created_at": now - dt.timedelta(days=age),
                }
                for state, age in (("PUBLISHED", 31), ("REVOKED", 31), ("PUBLISHED", 29), ("SCHEDULED", 400))
            ],
        )

    result = submit_task("cleanup_expired_data").get(timeout=120)
    assert result == {
        "exports": 2,
        "reports": 1,
        "task_history": 1,
        "notifications": 1,
        "access_logs": 1,
        "deferred_tasks": 2,
        "audit_log": 1,
        "workflows": 0,  # none old enough here (test_workflow_retention.py ages them)
        "partial_files": 1,
    }

    with session_scope(settings) as session:
        assert set(session.scalars(select(models.Export.task_id).where(models.Export.task_id.like(f"{tag}%")))) == {
            f"{tag}-fresh"
        }
        assert set(session.scalars(select(models.Report.csv_path).where(models.Report.csv_path.like(f"%{tag}%")))) == {
            new_report[0]
        }
        assert set(
            session.scalars(select(models.TaskRecord.task_id).where(models.TaskRecord.task_id.like(f"{tag}%")))
        ) == {f"{tag}-29"}
        assert set(
            session.scalars(select(models.Notification.subject).where(models.Notification.subject.like(f"{tag}%")))
        ) == {f"{tag}-29"}
        assert set(
            session.scalars(select(models.AccessLog.request_id).where(models.AccessLog.request_id.like(f"{tag}%")))
        ) == {f"{tag}-89"}
        assert set(
            session.scalars(select(models.DeferredTask.task_id).where(models.DeferredTask.task_id.like(f"{tag}%")))
        ) == {f"{tag}-PUBLISHED-29", f"{tag}-SCHEDULED-400"}
        session.execute(delete(models.DeferredTask).where(models.DeferredTask.task_id.like(f"{tag}%")))
        assert set(session.scalars(select(models.AuditEntry.action).where(models.AuditEntry.actor == tag))) == {
            f"{tag}-364"
        }
    assert not expired_file.exists()
    assert fresh_file.exists()
    assert not any((settings.reports_dir / n).exists() for n in old_report)
    assert all((settings.reports_dir / n).exists() for n in new_report)
    assert not stale_part.exists()
