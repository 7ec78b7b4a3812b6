"""INSERT ... ON CONFLICT for the two databases mallops runs on (PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import models


def _insert(session: Session, model: type[models.Base]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"no upsert for database {dialect!r}")


def upsert(
    session: Session,
    model: type[models.Base],
    values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    keys: Iterable[str],
) -> None:
    """Insert ``values`` (one row or several); where a row with the same ``keys`` exists, update it."""
    rows = [values] if isinstance(values, Mapping) else list(values)
    if not rows:
        return
    keys = tuple(keys)
    stmt = _insert(session, model)
    update = {name: stmt.excluded[name] for name in rows[0] if name not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update), rows)


def insert_ignoring(
    session: Session, model: type[models.Base], rows: Sequence[Mapping[str, Any]], *, keys: Iterable[str]
) -> None:
    """Insert ``rows``, silently skipping those whose ``keys`` already exist."""
    if rows:
        stmt = _insert(session, model).on_conflict_do_nothing(index_elements=list(keys))
        session.execute(stmt, list(rows))
