"""Errors with a meaning, shared by every layer.

The CLI maps them to exit codes: `InvalidInput` (and its subclasses) → 2,
every other `DecideError` → 1. Temporary failures (`TransientError`) are
retried by the next scheduled pass; permanent ones are recorded and stop.
This module sits in `cxr/`, the lowest layer, so that every package can raise
the same errors without importing upward.
"""

from __future__ import annotations


class DecideError(Exception):
    """Base of every error this product raises on purpose."""

    exit_code = 1


class InvalidInput(DecideError):
    """Bad input from a user or a file: one line that names the field."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(InvalidInput):
    """A named thing (version, decision, file) does not exist."""


class AlreadyExists(DecideError):
    """A unique thing was created twice (another worker may have won a race)."""


class IntegrityFailure(DecideError):
    """Bytes on disk or rows in the database do not match their recorded digest."""


class TransientError(DecideError):
    """Try again later: a lock, a lease held elsewhere, a busy database."""


class PermanentError(DecideError):
    """Record, alert, stop: retrying will not help."""
