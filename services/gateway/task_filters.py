"""The task history's filters beyond name, owner and time: several states and argument values.

``status=FAILURE,REVOKED`` matches any of the states; ``kwargs.<field>=<value>`` (nested with dots,
``kwargs.filters.store_id=12``) matches tasks whose arguments (``task_history.arguments``, JSON) hold that
value at that path. Used by ``GET /api/v1/tasks/history`` and by the bulk actions
(:mod:`services.gateway.bulk`), on SQLite and PostgreSQL alike.

Values are compared as text, so ``12`` matches the number 12 and the string "12": the path is read with
SQLAlchemy's JSON path operator as a string (PostgreSQL ``#>>`` gives every scalar as text; SQLite's
``JSON_EXTRACT`` gives SQL values, so it is cast to text, and booleans come out as 1 and 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, String, cast, or_

from services.gateway.task_history import normalize_state
from shared.models import TaskRecord

ARGUMENT_PREFIX = "kwargs."
MAX_ARGUMENT_FILTERS = 10
MAX_DEPTH = 8
MAX_VALUE_CHARS = 500
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_BOOLEANS = {"true": "1", "false": "0"}


class FilterError(ValueError):
    """A filter that cannot be applied; ``field`` names it (for the problem document's ``loc``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ArgumentFilter:
    path: tuple[str, ...]  # ("kwargs", "filters", "store_id")
    value: str

    @property
    def name(self) -> str:
        return ".".join(self.path)


def argument_clauses(filters: Iterable[ArgumentFilter], dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE clauses of argument filters for the database ``dialect`` (``sqlite``, ``postgresql``)."""
    return [_argument_clause(item, dialect) for item in filters]


def parse_states(status: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"FAILURE,REVOKED"`` (or a list) -> ("FAILURE", "REVOKED"); FilterError for an unknown state."""
    if status is None:
        return ()
    parts = status.split(",") if isinstance(status, str) else list(status)
    try:
        return tuple(dict.fromkeys(normalize_state(part) for part in parts if part.strip()))
    except ValueError as exc:
        raise FilterError("status", str(exc)) from exc


def parse_arguments(pairs: Mapping[str, object]) -> tuple[ArgumentFilter, ...]:
    """``{"kwargs.filters.store_id": "12"}`` -> argument filters; FilterError for a bad path or value."""
    if len(pairs) > MAX_ARGUMENT_FILTERS:
        raise FilterError("kwargs", f"at most {MAX_ARGUMENT_FILTERS} argument filters")
    found = []
    for name, value in pairs.items():
        if not name.startswith(ARGUMENT_PREFIX):
            raise FilterError(name, f"an argument filter is kwargs.<field>[.<field>...]=<value>, not {name!r}")
        segments = tuple(name.split("."))
        if len(segments) > MAX_DEPTH or not all(_SEGMENT.match(part) for part in segments[1:]):
            raise FilterError(name, f"{name!r} is not a path of field names (letters, digits, _) joined by dots")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise FilterError(name, f"{name} must be compared with a string, a number or a boolean")
        if len(text) > MAX_VALUE_CHARS:
            raise FilterError(name, f"{name}: a value of at most {MAX_VALUE_CHARS} characters")
        found.append(ArgumentFilter(segments, text))
    return tuple(found)


def _argument_clause(item: ArgumentFilter, dialect: str) -> ColumnElement[bool]:
    as_text = cast(TaskRecord.arguments[item.path].as_string(), String)
    if dialect == "sqlite" and item.value in _BOOLEANS:
        return or_(as_text == item.value, as_text == _BOOLEANS[item.value])
    return as_text == item.value
