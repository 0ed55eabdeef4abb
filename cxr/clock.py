"""The one clock: every timestamp the product writes or compares comes from `now()`.

Tests and benches move it (`moved`, `set_offset`) instead of building dates from a fixed year, so
that nothing turns wrong as the calendar does: a bench that built a year of hourly windows from
2026-01-01 broke on 2026-12-06, when its last windows came to lie in the future. Part of the
torch-free kernel of `cxr/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    """The current time, timezone-aware UTC (moved by the offset, if one is set)."""
    return datetime.now(UTC) + _offset


def set_offset(offset: timedelta) -> None:
    """Run this process's clock `offset` away from the machine's (a worker whose clock is wrong)."""
    global _offset
    _offset = offset


@contextmanager
def moved(by: timedelta) -> Iterator[None]:
    """Within the block, the clock reads `by` later than it otherwise would."""
    before = _offset
    set_offset(before + by)
    try:
        yield
    finally:
        set_offset(before)
