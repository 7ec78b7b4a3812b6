"""Database backups: ``pg_dump`` (custom format) for PostgreSQL, the SQLite online backup API for SQLite.

Backups are written atomically into ``settings.backups_dir`` as ``mallops-<UTC timestamp>.dump`` or
``.sqlite3``; only the newest ``keep`` are kept. :func:`restore` is the documented restore procedure
(docs/operations.md) in code form, so that it is tested.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from shared.errors import PermanentError, TransientError
from shared.files import atomic_path, sha256_of
from shared.settings import Settings

PREFIX = "mallops-"
SUFFIXES = (".dump", ".sqlite3")
PG_DUMP_TIMEOUT = 6 * 60 * 60


@dataclass(frozen=True)
class BackupResult:
    path: str
    size: int
    sha256: str
    database: str  # postgresql | sqlite
    deleted: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _libpq_url(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URL without the password, and the environment that carries the password
    (so it never shows in ``ps``)."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def dump_postgres(url: URL, target: Path, pg_dump: str = "pg_dump") -> None:
    conninfo, env = _libpq_url(url)
    with atomic_path(target) as tmp:
        try:
            completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [pg_dump, "--format=custom", "--no-owner", f"--file={tmp}", f"--dbname={conninfo}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=PG_DUMP_TIMEOUT,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PermanentError(
                f"{pg_dump!r} not found: install the PostgreSQL client or set MALLOPS_PG_DUMP_COMMAND"
            ) from exc
        if completed.returncode != 0:
            detail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            if "could not connect" in completed.stderr or "Connection refused" in completed.stderr:
                raise TransientError(f"pg_dump could not reach the database: {detail}")
            raise PermanentError(f"pg_dump failed with exit code {completed.returncode}: {detail}")


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (writers may keep writing meanwhile)."""
    if not source.exists():
        raise PermanentError(f"SQLite database {source} does not exist")
    with atomic_path(target) as tmp:
        with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        # a plain single-file database, not WAL, so that the copy is complete without -wal/-shm files
        with contextlib.closing(sqlite3.connect(tmp)) as dst:
            dst.execute("PRAGMA journal_mode=DELETE")


def existing_backups(directory: Path) -> list[Path]:
    """Finished backups, oldest first (names sort by their timestamp)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.startswith(PREFIX) and p.suffix in SUFFIXES)


def prune(directory: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` backups; returns the names deleted."""
    backups = existing_backups(directory)
    doomed = backups[: max(len(backups) - keep, 0)]
    for path in doomed:
        path.unlink(missing_ok=True)
    return [p.name for p in doomed]


def backup_database(settings: Settings, keep: int | None = None, now: dt.datetime | None = None) -> BackupResult:
    """Back up the configured database into ``settings.backups_dir`` and keep the newest ``keep``."""
    keep = keep or settings.backup_keep
    url = make_url(settings.sqlalchemy_url)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    backend = url.get_backend_name()
    if backend == "postgresql":
        target = settings.backups_dir / f"{PREFIX}{stamp}.dump"
        dump_postgres(url, target, settings.pg_dump_command)
    elif backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise PermanentError("an in-memory SQLite database cannot be backed up")
        target = settings.backups_dir / f"{PREFIX}{stamp}.sqlite3"
        copy_sqlite(Path(url.database), target)
    else:
        raise PermanentError(f"no backup method for database {backend!r}")
    deleted = prune(settings.backups_dir, keep)
    return BackupResult(str(target), target.stat().st_size, sha256_of(target), backend, deleted)


def restore(backup: Path, database_url: str, pg_restore: str = "pg_restore") -> None:
    """Restore ``backup`` into the empty database ``database_url`` (see docs/operations.md).

    PostgreSQL: ``pg_restore --no-owner --exit-on-error --dbname=<url> <backup>`` into a database created
    for it. SQLite: the online backup API copies the file into the target path (which must not exist).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        conninfo, env = _libpq_url(url)
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [pg_restore, "--no-owner", "--exit-on-error", f"--dbname={conninfo}", str(backup)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {completed.stderr.strip()}")
        return
    if not url.database:
        raise ValueError("restore needs a SQLite file path")
    target = Path(url.database)
    if target.exists():
        raise FileExistsError(f"{target} exists; restore into a new path (stop the services, then swap files)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(backup)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
