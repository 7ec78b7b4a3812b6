"""Opaque page cursors for lists ordered newest first by (time, id): the task history
(``services/gateway/task_history.py``) and the audit trail (``shared/audit.py``)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def encode_cursor(at: dt.datetime | None, row_id: str) -> str:
    raw = json.dumps([at.isoformat() if at else None, row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime | None, str]:
    """The (time, id) a cursor points after; ValueError for a cursor this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        if not isinstance(row_id, str) or not (when is None or isinstance(when, str)):
            raise TypeError("bad cursor fields")
        return (_aware(dt.datetime.fromisoformat(when)) if when else None), row_id
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc
