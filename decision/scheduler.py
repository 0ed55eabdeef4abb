"""Scheduled monitoring passes: APScheduler 3 decides *when*, the registry decides *who*.

`decide monitor schedule` runs one `Scheduler` per process. Each has its own
in-memory APScheduler job store — APScheduler 3's documentation says a job
store must never be shared between schedulers — loaded from (and re-synced
every `sync_seconds` with) the `schedules` table, so a restarted process
resumes the stored schedules. Processes that share a database coordinate
through the registry instead (`registry/repo_jobs.py`):

1. stale passes (their process died) are marked `abandoned`;
2. the lease `schedule:<id>` is taken — held elsewhere: skip this fire;
3. a pass row is inserted for the exact fire time, UNIQUE(schedule, fire
   time) — already there: another process ran this fire, skip it;
4. a thread renews the lease and the pass heartbeat while the pass runs;
5. the pass (`decision.jobs.monitor_pass`: feedback window → monitor →
   ingest → treat) runs; the engine's atomic report claims keep a report from
   being treated twice even across schedules;
6. the pass is recorded `succeeded` (with a summary; the schedule moves to
   the next feedback window) or `failed` (with the error) — a crash in a pass
   never stops the scheduler — and the lease is released.

Passes run in the thread that calls `serve()` (the main thread for the CLI):
APScheduler's own thread only computes fire times (coalesced, with a misfire
grace) and queues them. That keeps passes interruptible: the first SIGTERM or
SIGINT stops accepting fires and lets a running pass finish; a second one
interrupts it (the engine records the interrupted treatment as `failed`, the
pass as `failed: interrupted`); leases are released and `serve()` returns 0.
A SIGKILL leaves a running pass and run behind: their heartbeats stop, and
the next pass (here or in another process) marks them abandoned and picks the
report up again.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.orm import Session

from cxr import clock
from cxr.errors import InvalidInput, NotFound
from decision.liveness import Heartbeat
from decision.unlabelled import UnlabelledResult
from decision.unlabelled import summary as unlabelled_summary
from registry import repo
from registry.entities_jobs import PassStatus, ScheduleEntity
from registry.session import session_scope
from registry.settings import get_settings

log = logging.getLogger(__name__)

#: (schedule, feedback window index) → the pass's JSON summary
PassFn = Callable[[ScheduleEntity, int], dict[str, Any]]

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 (and 7) = Sunday


def _weekdays(field: str) -> str:
    """A crontab day-of-week field as APScheduler 3 names (its numbers start at Monday: never pass them on)."""
    days: set[int] = set()

    def day(tok: str) -> int:
        tok = tok.strip().lower()
        if tok[:3] in _DAYS and not tok.isdigit():
            return _DAYS.index(tok[:3])
        if not tok.isdigit() or int(tok) > 7:
            raise ValueError(f"bad day of week {tok!r}")
        return int(tok) % 7

    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            raise ValueError(f"bad step {step!r}")
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            lo, hi = day(a), day(b)
            hi = 7 if hi == 0 and lo > 0 else hi  # 5-7, 5-0, fri-sun: Friday to Sunday
            if lo > hi:
                raise ValueError(f"bad range {base!r}")
        else:
            lo = day(base)
            hi = 6 if step else lo
        days.update(d % 7 for d in range(lo, hi + 1, int(step or 1)))
    return "*" if len(days) == 7 else ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str) -> CronTrigger:
    """A UTC trigger from a crontab: 5 fields (minute hour day month weekday), or 6 with seconds first.

    Weekdays follow crontab (0 or 7 = Sunday, or names), not APScheduler 3's
    Monday-first numbers. Raises `InvalidInput` naming `cron`.
    """
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) not in (5, 6):
        raise InvalidInput(f"expected 5 crontab fields (minute hour day month weekday) or 6 with seconds first, "
                           f"got {expr!r}", field="cron")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(dow), timezone=UTC)
    except ValueError as exc:
        raise InvalidInput(f"{expr!r}: {exc}", field="cron") from None


def job_summary(result: Any) -> dict[str, Any]:
    """A `decision.jobs.JobResult` as plain JSON: breaches, reports ingested, decisions and their runs."""
    mon, eng = result.monitor, result.pass_summary
    if isinstance(mon, UnlabelledResult):
        seen: dict[str, Any] = unlabelled_summary(mon)
    else:
        seen = {"watched": mon.watched,
                "breaches": [{"pathology": m.pathology, "site": m.site, "breaches": list(m.breaches),
                              "recall": m.recall, "fpr": m.fpr, "auroc": m.auroc} for m in mon.metrics if m.breaches],
                "reports_created": mon.ingested.created, "reports_existing": mon.ingested.existing,
                "report_ids": list(mon.ingested.ids), "still_open": list(mon.persisting), "realised": mon.realised}
    return {
        "week": mon.window.index + 1, "window": [mon.window.start.isoformat(), mon.window.end.isoformat()],
        "version": mon.version, "dataset": mon.dataset.name, **seen,
        "abandoned_runs": list(eng.abandoned_runs), "released_claims": eng.released_claims,
        "decisions": [{"report_id": d.report_id, "decision_id": d.decision_id, "status": d.status.value,
                       "message": d.message,
                       "runs": [{"run_id": r.run_id, "treatment": r.treatment, "outcome": r.outcome.value,
                                 "version": r.version.ref if r.version else None,
                                 "wall_seconds": round(r.wall_seconds, 3), "error": r.error} for r in d.runs]}
                      for d in eng.decisions],
        "seconds": round(result.seconds, 3),
    }


@dataclass(frozen=True)
class PassOutcome:
    """What one fire came to: `ran` (with the pass's final status) or skipped, and why."""

    schedule_id: int
    fire_time: datetime
    ran: bool
    status: PassStatus | None = None
    pass_id: int | None = None
    reason: str = ""


class _Fire:
    """An APScheduler job seen through one fire: its function also gets the scheduled `fire_time`."""

    def __init__(self, job: Any, fire_time: datetime) -> None:
        self._job, self.kwargs = job, {**job.kwargs, "fire_time": fire_time}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


class _QueueExecutor(BaseExecutor):
    """Hands due fires to the thread that runs `Scheduler.serve()` (APScheduler's custom-executor hook)."""

    def __init__(self, q: queue.Queue) -> None:
        super().__init__()
        self.q = q

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self.q.put((job, run_times))

    def run(self, job: Any, run_times: list[datetime]) -> None:
        # coalesce=True: one run time, the latest due; run_job applies the misfire grace.
        try:
            events = run_job(_Fire(job, run_times[-1]), job._jobstore_alias, run_times[-1:], self._logger.name)
        finally:
            self._run_job_success(job.id, [])
        for e in events:
            self._scheduler._dispatch_event(e)


class Scheduler:
    """Runs the registry's enabled schedules in this process until stopped; see the module docstring."""

    def __init__(self, url: str | None = None, *, pass_fn: PassFn | None = None, holder: str | None = None,
                 stale_seconds: float | None = None, misfire_grace_seconds: int = 300, sync_seconds: float = 30,
                 policy_path: Any = None, on_outcome: Callable[[PassOutcome], None] | None = None) -> None:
        self.url = url
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.stale_seconds = float(stale_seconds or get_settings().stale_seconds)
        self.sync_seconds, self.policy_path, self.on_outcome = sync_seconds, policy_path, on_outcome
        self.pass_fn: PassFn = pass_fn or self._monitor_pass
        self.outcomes: list[PassOutcome] = []
        self._engine: Any = None
        self._queue: queue.Queue = queue.Queue()
        self._executor = _QueueExecutor(self._queue)
        self._crons: dict[int, str] = {}
        self._stop = threading.Event()
        self._in_pass = False
        self._interrupted = False
        self._aps = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},  # per process, never shared (APScheduler 3's rule)
            executors={"default": self._executor, "sync": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_seconds},
            timezone=UTC,
        )

    # -- the real pass ----------------------------------------------------------------
    def engine(self) -> Any:
        """The process's decision engine (its catalog caches weights and features across passes)."""
        from decision.engine import Engine

        if self._engine is None:
            self._engine = Engine.from_settings(self.policy_path, worker=self.holder)
            if self.url is not None:
                self._engine.url = self.url
        return self._engine

    def _monitor_pass(self, schedule: ScheduleEntity, index: int) -> dict[str, Any]:
        from decision.jobs import monitor_pass

        result = monitor_pass(self.engine(), schedule.model, schedule.source, schedule.site, index=index,
                              per_window=schedule.per_window, max_cost=schedule.max_cost,
                              stale_after=timedelta(seconds=self.stale_seconds), unlabelled=schedule.unlabelled)
        return job_summary(result)

    # -- one fire ------------------------------------------------------------------------
    def _fire(self, schedule_id: int, fire_time: datetime | None = None) -> PassOutcome:
        # `_QueueExecutor` passes the scheduled time; APScheduler checks at add_job that it may be omitted.
        return self.run_scheduled_pass(schedule_id, fire_time or clock.now().replace(microsecond=0))

    def run_scheduled_pass(self, schedule_id: int, fire_time: datetime) -> PassOutcome:
        """Run the pass of `schedule_id` fired at `fire_time` unless another scheduler has it; record it."""
        lease = f"schedule:{schedule_id}"
        with session_scope(self.url) as s:
            if stale := repo.mark_stale_passes(s, older_than=timedelta(seconds=self.stale_seconds)):
                log.warning("passes %s had no heartbeat for %ss: marked abandoned", stale, self.stale_seconds)
            got = repo.acquire_lease(s, lease, self.holder, self.stale_seconds)
        if not got:
            return self._skip(schedule_id, fire_time, "another scheduler holds the lease")
        try:
            with session_scope(self.url) as s:
                try:
                    schedule = repo.get_schedule(s, schedule_id)
                except NotFound:
                    return self._skip(schedule_id, fire_time, "the schedule was deleted")
                if not schedule.enabled:
                    return self._skip(schedule_id, fire_time, "the schedule is disabled")
                entry = repo.start_pass(s, schedule_id, fire_time, self.holder, schedule.next_index)
            if entry is None:
                return self._skip(schedule_id, fire_time, "another scheduler ran this fire time")
            log.info("pass %s of %s (fire %s, week %d) starts", entry.id, schedule.name, fire_time.isoformat(),
                     entry.window_index + 1)
            return self._run(schedule, entry.id, entry.window_index, fire_time, lease)
        finally:
            try:
                with session_scope(self.url) as s:
                    repo.release_lease(s, lease, self.holder)
            except Exception as exc:  # it expires on its own
                log.warning("releasing %s failed: %s", lease, exc)

    def _run(self, schedule: ScheduleEntity, pass_id: int, index: int, fire_time: datetime,
             lease: str) -> PassOutcome:
        status, summary, error = PassStatus.failed, {}, ""
        try:
            with Heartbeat(self.url, lambda s: self._keep(s, lease, pass_id), every=self.stale_seconds / 3,
                           what=f"keeping {lease}"):
                self._in_pass = True
                try:
                    summary = self.pass_fn(schedule, index) or {}
                finally:
                    self._in_pass = False
            status = PassStatus.succeeded
        except Exception as exc:  # recorded; the scheduler and the next pass go on
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.error("pass %s of %s failed: %s", pass_id, schedule.name, error,
                      exc_info=log.isEnabledFor(logging.DEBUG))
        except BaseException:  # interrupted (second SIGTERM/SIGINT): record it, then let it propagate
            self._finish(pass_id, PassStatus.failed, {}, "interrupted")
            raise
        self._finish(pass_id, status, summary, error)
        self._deliver_notifications()
        return self._note(PassOutcome(schedule.id, fire_time, True, status, pass_id, error))

    def _deliver_notifications(self) -> None:
        """After each pass: send what the pass (or anyone) put in the outbox; a failure is logged, never fatal."""
        from decision.notify import deliver, settings_from_policy

        try:
            out = deliver(self.url, settings=settings_from_policy(self.policy_path))  # the policy's [notify]
            if out.attempted:
                log.info("notifications: %d delivered, %d to retry, %d dead", out.delivered, out.retrying, out.dead)
        except Exception as exc:  # the outbox keeps the events: the next pass or `decide notify deliver` sends them
            log.warning("notification delivery failed: %s", exc)

    def _keep(self, s: Session, lease: str, pass_id: int) -> None:
        """While a pass runs: renew the schedule's lease and the pass's heartbeat."""
        if not repo.renew_lease(s, lease, self.holder, self.stale_seconds):
            log.warning("lease %s was lost (expired and taken); pass %s goes on: its fire time and the report "
                        "claims still keep the work single", lease, pass_id)
        repo.heartbeat_pass(s, pass_id)

    def _finish(self, pass_id: int, status: PassStatus, summary: dict[str, Any], error: str) -> None:
        try:
            with session_scope(self.url) as s:
                repo.finish_pass(s, pass_id, status, summary=summary, error_text=error)
        except Exception as exc:  # the pass stays `running`; its stale heartbeat gets it marked abandoned
            log.error("recording pass %s as %s failed: %s", pass_id, status.value, exc)

    def _skip(self, schedule_id: int, fire_time: datetime, why: str) -> PassOutcome:
        log.info("schedule %s, fire %s: skipped (%s)", schedule_id, fire_time.isoformat(), why)
        return self._note(PassOutcome(schedule_id, fire_time, False, reason=why))

    def _note(self, out: PassOutcome) -> PassOutcome:
        self.outcomes.append(out)
        if self.on_outcome is not None:
            try:
                self.on_outcome(out)
            except Exception as exc:  # a display callback must not break the scheduler
                log.warning("on_outcome callback failed: %s", exc)
        return out

    # -- schedules → APScheduler jobs -------------------------------------------------------
    def sync(self) -> list[ScheduleEntity]:
        """Make this process's jobs match the registry's enabled schedules; return them."""
        with session_scope(self.url, read_only=True) as s:
            wanted = {sc.id: sc for sc in repo.list_schedules(s, enabled=True)}
        for sid in [sid for sid in self._crons if sid not in wanted]:
            self._aps.remove_job(f"schedule:{sid}")
            del self._crons[sid]
            log.info("schedule %s removed", sid)
        for sid, sc in wanted.items():
            if self._crons.get(sid) == sc.cron:
                continue
            try:
                trigger = cron_trigger(sc.cron)
            except InvalidInput as exc:
                log.error("schedule %s: %s (not scheduled)", sc.name, exc)
                continue
            self._aps.add_job(self._fire, trigger, id=f"schedule:{sid}", name=sc.name,
                              kwargs={"schedule_id": sid}, replace_existing=True)
            self._crons[sid] = sc.cron
            log.info("schedule %s (%s): %s on %s at %s", sc.name, sc.cron, sc.model, sc.source, sc.site)
        return list(wanted.values())

    def _sync_safely(self) -> None:
        try:
            self.sync()
        except Exception as exc:  # the database may be away for a moment: keep the jobs we have
            log.warning("re-sync of schedules failed: %s", exc)

    # -- running ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop accepting fires; `serve()` returns once a running pass is done."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self._stop.is_set():
            self._stop.set()
            log.warning("%s: no new passes; a running pass finishes first (send %s again to interrupt it)",
                        name, name)
        elif self._in_pass and not self._interrupted:
            self._interrupted = True
            log.warning("%s again: interrupting the running pass", name)
            raise KeyboardInterrupt

    def serve(self, *, max_passes: int | None = None, install_signals: bool = True) -> int:
        """Run fires as they come until stopped (signal, `stop()`, or `max_passes` passes ran); return 0."""
        if self.pass_fn == self._monitor_pass:
            self.engine()  # a bad policy or plugin fails here, once, not in every pass
        old = {}
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        self._aps.start()
        try:
            self.sync()
            self._aps.add_job(self._sync_safely, "interval", seconds=self.sync_seconds, id="sync", executor="sync",
                              replace_existing=True)
            while not self._stop.is_set():
                try:
                    job, run_times = self._queue.get(timeout=0.25)
                except queue.Empty:
                    continue
                if self._stop.is_set():
                    self._executor._run_job_success(job.id, [])
                    break
                self._executor.run(job, run_times)
                if max_passes is not None and sum(o.ran for o in self.outcomes) >= max_passes:
                    break
        except KeyboardInterrupt:
            log.warning("interrupted")
        finally:
            self._stop.set()
            self._aps.shutdown(wait=False)
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return 0
