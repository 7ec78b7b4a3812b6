"""Restoring a backup of ``backup_database`` into a database, and fingerprinting a database to check it.

The backup formats are the task's own (services/maintenance/backups.py): ``pg_dump --format=custom``
(``.dump``) for PostgreSQL, a single-file SQLite database made with the online backup API (``.sqlite3``)
for SQLite. :func:`restore` refuses a target that already has tables unless ``force`` (then PostgreSQL
gets ``pg_restore --clean --if-exists`` and a SQLite file is replaced). A PostgreSQL database that does
not exist yet is created. :func:`fingerprint` gives each table's row count and a SHA-256 of its rows in
primary-key order: equal fingerprints mean the same data (``mallops restore`` prints them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlalchemy.engine import URL, make_url

from shared.db import make_engine

PG_RESTORE_TIMEOUT = 6 * 60 * 60


class RestoreError(Exception):
    """The backup cannot be restored into that database as asked (bad input: exit code 2)."""


class DatabaseUnreachable(Exception):
    """The target database cannot be reached (exit code 3)."""


@dataclass(frozen=True)
class TableFingerprint:
    rows: int
    sha256: str


def libpq_url(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URL without the password, and the environment that carries the password
    (so it never shows in ``ps``)."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _sqlalchemy_url(database_url: str) -> URL:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


def table_names(database_url: str) -> list[str]:
    """The tables of the database (none if a SQLite file or a PostgreSQL database does not exist)."""
    url = _sqlalchemy_url(database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        return []
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        return sorted(inspect(engine).get_table_names())
    except sqlalchemy.exc.OperationalError as exc:
        if "does not exist" in str(exc):
            return []
        raise DatabaseUnreachable(str(exc).splitlines()[0]) from exc
    finally:
        engine.dispose()


def _create_postgres_database(url: URL) -> None:
    """Create the database of ``url`` if it does not exist (connecting to the server's ``postgres``)."""
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}).first()
            if not exists:
                quoted = admin.dialect.identifier_preparer.quote(str(url.database))
                conn.execute(text(f"CREATE DATABASE {quoted}"))
    except sqlalchemy.exc.OperationalError as exc:
        raise DatabaseUnreachable(str(exc).splitlines()[0]) from exc
    finally:
        admin.dispose()


def restore(backup: Path, database_url: str, *, force: bool = False, pg_restore: str = "pg_restore") -> None:
    """Restore ``backup`` into ``database_url``; RestoreError if the database has tables (unless
    ``force``) or the backup does not fit the database kind."""
    if not backup.is_file():
        raise RestoreError(f"no backup file {backup}")
    url = _sqlalchemy_url(database_url)
    backend = url.get_backend_name()
    expected = {"postgresql": ".dump", "sqlite": ".sqlite3"}.get(backend)
    if expected is None:
        raise RestoreError(f"cannot restore into a {backend!r} database (PostgreSQL or SQLite)")
    if backup.suffix != expected:
        raise RestoreError(f"{backup.name} is not a {backend} backup (a {backend} backup ends in {expected})")
    if backend == "postgresql":
        _create_postgres_database(url)
    existing = table_names(database_url)
    if existing and not force:
        raise RestoreError(
            f"the database has {len(existing)} tables ({', '.join(existing[:3])}, ...); "
            "restore into a new database, or pass --force to replace them"
        )
    if backend == "postgresql":
        _pg_restore(backup, url, pg_restore, clean=bool(existing))
    else:
        _sqlite_restore(backup, url)


def _pg_restore(backup: Path, url: URL, pg_restore: str, clean: bool) -> None:
    conninfo, env = libpq_url(url)
    argv = [pg_restore, "--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={conninfo}"]
    if clean:
        argv += ["--clean", "--if-exists"]
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*argv, str(backup)], env=env, capture_output=True, text=True, timeout=PG_RESTORE_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise RestoreError(f"{pg_restore!r} not found: install the PostgreSQL client") from exc
    if completed.returncode != 0:
        detail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RestoreError(f"pg_restore failed: {detail}")


def _sqlite_restore(backup: Path, url: URL) -> None:
    if not url.database or url.database == ":memory:":
        raise RestoreError("restore needs a SQLite file path (sqlite:////path/to/file.db)")
    target = Path(url.database)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        leftover.unlink(missing_ok=True)  # only reached for a new file or with force
    with contextlib.closing(sqlite3.connect(backup)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def fingerprint(database_url: str) -> dict[str, TableFingerprint]:
    """Per table: its row count and a SHA-256 over its rows in primary-key (else all-column) order."""
    url = _sqlalchemy_url(database_url)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        prints: dict[str, TableFingerprint] = {}
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                order = list(table.primary_key.columns) or list(table.columns)
                digest = hashlib.sha256()
                rows = 0
                for row in conn.execute(select(table).order_by(*order)):
                    digest.update(repr(tuple(row)).encode())
                    digest.update(b"\n")
                    rows += 1
                prints[table.name] = TableFingerprint(rows, digest.hexdigest())
        return prints
    except sqlalchemy.exc.OperationalError as exc:
        raise DatabaseUnreachable(str(exc).splitlines()[0]) from exc
    finally:
        engine.dispose()
