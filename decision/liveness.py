"""Liveness: how a long piece of work says it is alive, and how a pass tells live work from a dead one's.

A treatment run beats every `HEARTBEAT_SECONDS` (`Heartbeat`, a thread with its own transactions);
a scheduled pass keeps its lease the same way. A run whose heartbeat is older than the stale time
(`DECIDE_STALE_SECONDS`, 90 s) is taken over by the next pass; `--take-over` does it after two
missed beats and a margin (`TAKEOVER_AFTER`). `live_runs` says, for each run still `running`, how
old its heartbeat is and when a pass would take it over, with or without `--take-over`, and
`describe` says so in words (to an operator who gave `--take-over` it says when to run again, not to
give the flag they just gave) — the engine's pass summary and `decide decisions` both read it here.
Torch-free: `decide decisions` imports it.
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
    #: when `decide run --take-over` can take it over (0: now), and the moment these ages were measured
    take_over_in_s: float = 0.0
    seen_at: datetime | None = None


def live_run(r: RunEntity, now: datetime, stale_after: timedelta) -> LiveRun:
    """`r` as seen at `now` by a pass that takes over runs silent for `stale_after`."""
    age = (now - r.heartbeat_at).total_seconds()
    forced = min(stale_after, TAKEOVER_AFTER).total_seconds()
    return LiveRun(r.id, r.decision_id, r.treatment, age, max(0.0, stale_after.total_seconds() - age),
                   age > 2 * HEARTBEAT_SECONDS, max(0.0, forced - age), now)


def describe(r: LiveRun, *, take_over_given: bool = False) -> str:
    """One line for an operator: what is running, how long since it beat, and when it can be taken over.

    With `take_over_given` (the pass had `--take-over` and found the run alive) it says when `--take-over`
    will act — "take-over possible in 18 s (at 12:00:45 UTC); run again then" — never to give the flag
    just given. Without it, it says when the next plain `decide run` takes it over and when
    `decide run --take-over` can."""
    def at(seconds: float) -> str:
        return "" if r.seen_at is None else f" (at {r.seen_at + timedelta(seconds=seconds):%H:%M:%S} UTC)"

    head = (f"decision {r.decision_id}: run {r.run_id} ({r.treatment}) is running; last heartbeat "
            f"{r.heartbeat_age_s:.0f} s ago")
    if take_over_given:
        if r.take_over_in_s > 0:
            return (f"{head} — it may still be alive: take-over possible in {r.take_over_in_s:.0f} s"
                    f"{at(r.take_over_in_s)} if it does not beat again; run again then")
        return f"{head} — take-over possible now: run again"
    plain = (f"taken over by the next `decide run` in {r.takeover_in_s:.0f} s{at(r.takeover_in_s)} unless it "
             "beats again" if r.takeover_in_s > 0 else "taken over by the next `decide run`")
    forced = (f"`decide run --take-over` can take it over in {r.take_over_in_s:.0f} s{at(r.take_over_in_s)}"
              if r.take_over_in_s > 0 else "`decide run --take-over` now, if its process is gone")
    return f"{head} — {plain} ({forced})"


def running_now(s: Session, stale_after: timedelta, now: datetime | None = None) -> list[LiveRun]:
    """The runs still `running` in `s`, with their heartbeat's age and when a pass would take them over."""
    now = now or clock.now()
    return [live_run(r, now, stale_after) for r in repo.running_runs(s)]


def live_runs(url: str | None, stale_after: timedelta) -> list[LiveRun]:
    """`running_now` in a read-only transaction of its own."""
    with session_scope(url, read_only=True) as s:
        return running_now(s, stale_after)
