"""Dates for tests, relative to the one clock (`cxr.clock`): none of them turns wrong as the calendar does.

A test that needs a window in the past takes it from here instead of writing a year: `day(n)` is `n` days
after `ANCHOR`, a Monday 00:00 UTC at least 13 weeks before the clock read when this module was first
imported, fixed for the test session (so every test, and every expected text, sees the same dates).
Offsets up to 90 days stay in the past, a year of them with the clock moved a year ahead; and they stay
clear of the phantom's replayed weeks, which start about a year back (`decision.jobs.phantom_epoch`).

A subprocess that imports this module sees the same anchor (it is handed down in `DECIDE_TEST_ANCHOR`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from cxr import clock

_ENV = "DECIDE_TEST_ANCHOR"


def _anchor() -> datetime:
    if os.environ.get(_ENV):
        return datetime.fromisoformat(os.environ[_ENV])
    day = (clock.now() - timedelta(weeks=13)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    anchor = day - timedelta(days=day.weekday())
    os.environ[_ENV] = anchor.isoformat()
    return anchor


#: a Monday 00:00 UTC, 13 to 14 weeks before the test session began
ANCHOR = _anchor()


def day(n: float = 0, *, hours: float = 0) -> datetime:
    """`n` days (and `hours`) after `ANCHOR`; negative `n` is before it."""
    return ANCHOR + timedelta(days=n, hours=hours)


def week(n: int = 0) -> tuple[datetime, datetime]:
    """The Monday-to-Monday window of week `n` after `ANCHOR` (week 0 starts at `ANCHOR`)."""
    return day(7 * n), day(7 * n + 7)


def days_ago(n: float) -> datetime:
    """`n` days before the clock's now (read at each call: moves with the clock)."""
    return clock.now() - timedelta(days=n)


def iso(t: datetime) -> str:
    """`t` as a report's JSON writes a time: "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ymd(t: datetime) -> str:
    """`t`'s UTC date as the CLI's tables show it: "YYYY-MM-DD"."""
    return t.astimezone(UTC).strftime("%Y-%m-%d")
