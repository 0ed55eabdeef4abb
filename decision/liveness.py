"""Liveness: how a long piece of work says it is alive, and how a pass tells live work from a dead one's.

A treatment run beats every `HEARTBEAT_SECONDS` (`Heartbeat`, a thread with its own transactions);
a scheduled pass keeps its lease the same way. A run whose heartbeat is older than the stale time
(`DECIDE_STALE_SECONDS`, 90 s) is taken over by the next pass; `--take-over` does it after two
missed beats and a margin (`TAKEOVER_AFTER`). `live_runs` says, for each run still `running`, how
old its heartbeat is and when a pass would take it over — the engine's pass summary and
`decide decisions` both read it here. Torch-free: `decide decisions` imports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from cxr import clock
from registry import repo
from registry.entities import RunEntity
from registry.session import session_scope

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 20.0
#: a live run beats every HEARTBEAT_SECONDS; two missed beats and a margin mean its process is gone
TAKEOVER_AFTER = timedelta(seconds=2 * HEARTBEAT_SECONDS + 5)


class Heartbeat:
    """Calls `beat(session)` in its own transaction every `every` seconds from a thread, while a
    long piece of work runs: a treatment run's heartbeat, a scheduled pass's lease and heartbeat."""

    def __init__(self, url: str | None, beat: Callable[[Session], None], *, every: float = HEARTBEAT_SECONDS,
                 what: str = "heartbeat") -> None:
        self.url, self.beat, self.every, self.what = url, beat, every, what
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name=what, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with session_scope(self.url) as s:
                    self.beat(s)
            except Exception as exc:  # a missed beat only risks an early "abandoned"
                log.warning("%s failed: %s", self.what, exc)

    def __enter__(self) -> Heartbeat:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


@dataclass(frozen=True)
class LiveRun:
    """A run still `running` after the recovery step: another process's work, or a dead one's not yet taken over."""

    run_id: int
    decision_id: int | None
    treatment: str
    heartbeat_age_s: float
    takeover_in_s: float  # 0: it would be taken over now (it was not, because this pass had no take-over)
    silent: bool  # missed at least two heartbeats: its process is very likely gone


def live_run(r: RunEntity, now: datetime, stale_after: timedelta) -> LiveRun:
    """`r` as seen at `now` by a pass that takes over runs silent for `stale_after`."""
    age = (now - r.heartbeat_at).total_seconds()
    return LiveRun(r.id, r.decision_id, r.treatment, age, max(0.0, stale_after.total_seconds() - age),
                   age > 2 * HEARTBEAT_SECONDS)


def running_now(s: Session, stale_after: timedelta, now: datetime | None = None) -> list[LiveRun]:
    """The runs still `running` in `s`, with their heartbeat's age and when a pass would take them over."""
    now = now or clock.now()
    return [live_run(r, now, stale_after) for r in repo.running_runs(s)]


def live_runs(url: str | None, stale_after: timedelta) -> list[LiveRun]:
    """`running_now` in a read-only transaction of its own."""
    with session_scope(url, read_only=True) as s:
        return running_now(s, stale_after)
