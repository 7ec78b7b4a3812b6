"""How business code says whether a failure may go away on its own: the task base retries
:class:`TransientError` (and connection errors) and fails at once on :class:`PermanentError`."""

from __future__ import annotations


class TransientError(Exception):
    """Raise from business code for a failure that may go away on its own (retry it)."""


class PermanentError(Exception):
    """Raise from business code for a failure that a retry cannot fix (bad data, invalid input)."""
