"""Schedules, scheduler leases and scheduled passes (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from cxr.errors import AlreadyExists, InvalidInput, NotFound
from registry import audit, repo
from registry.entities_jobs import PassStatus
from registry.models import utcnow
from registry.models_jobs import PassRow, ScheduleRow
from registry.session import session_scope
from tests import dates

T0 = dates.day(0, hours=12)


def _schedule(s, name="default", **kw):
    args = {"cron": "0 6 * * 1", "model": "cxr", "source": "phantom:site-b", "site": "site-b", "per_window": 200}
    return repo.upsert_schedule(s, name, **{**args, **kw})


# -- schedules -------------------------------------------------------------------
def test_schedule_create_update_delete_are_audited(db_url):
    with session_scope() as s:
        sc = _schedule(s, max_cost=3.0)
        assert (sc.name, sc.next_index, sc.enabled, sc.max_cost) == ("default", 0, True, 3.0)
        assert sc.created_at.tzinfo is not None
    with session_scope() as s:
        again = _schedule(s, cron="*/5 * * * *", max_cost=3.0)
        assert again.id == sc.id and again.cron == "*/5 * * * *" and again.next_index == 0
        _schedule(s, cron="*/5 * * * *", max_cost=3.0)  # no change: no event
    with session_scope() as s:
        assert [x.name for x in repo.list_schedules(s, enabled=True)] == ["default"]
        repo.delete_schedule(s, "default")
    with session_scope(read_only=True) as s:
        assert repo.list_schedules(s) == []
        events = [(e.action, e.old, e.new) for e in audit.list_events(s, entity_type="schedule")]
        assert [a for a, *_ in events] == ["schedule.create", "schedule.update", "schedule.delete"]
        assert events[1][1] == {"cron": "0 6 * * 1"} and events[1][2] == {"cron": "*/5 * * * *"}
        assert audit.verify_chain(s).ok
        with pytest.raises(NotFound, match="no schedule 'default'"):
            repo.get_schedule(s, "default")


@pytest.mark.parametrize(("field", "value"), [("per_window", 0), ("source", " "), ("max_cost", float("nan"))])
def test_bad_schedule_fields_are_refused_naming_the_field(db_url, field, value):
    with session_scope() as s, pytest.raises(InvalidInput) as err:
        _schedule(s, **{field: value})
    assert err.value.field == field


# -- leases ------------------------------------------------------------------------
def test_lease_acquire_renew_release(db_url):
    with session_scope() as s:
        assert repo.acquire_lease(s, "schedule:1", "a", 60, now=T0)
        assert not repo.acquire_lease(s, "schedule:1", "b", 60, now=T0 + timedelta(seconds=30))
        assert repo.acquire_lease(s, "schedule:1", "a", 60, now=T0 + timedelta(seconds=30))  # holder re-acquires
        lease = repo.get_lease(s, "schedule:1")
        assert lease.holder == "a" and lease.acquired_at == T0  # re-acquiring keeps the original start
        assert lease.expires_at == T0 + timedelta(seconds=90)
        assert repo.renew_lease(s, "schedule:1", "a", 60, now=T0 + timedelta(seconds=80))
        assert not repo.renew_lease(s, "schedule:1", "b", 60, now=T0 + timedelta(seconds=80))
        assert not repo.acquire_lease(s, "schedule:1", "b", 60, now=T0 + timedelta(seconds=120))  # renewed: not yet
        assert not repo.release_lease(s, "schedule:1", "b")
        assert repo.release_lease(s, "schedule:1", "a")
        assert repo.get_lease(s, "schedule:1") is None
        assert repo.acquire_lease(s, "schedule:1", "b", 60, now=T0 + timedelta(seconds=121))


def test_an_expired_lease_is_stolen_and_its_old_holder_cannot_renew_it(db_url):
    with session_scope() as s:
        assert repo.acquire_lease(s, "schedule:7", "dead", 10, now=T0)
        assert repo.acquire_lease(s, "schedule:7", "alive", 10, now=T0 + timedelta(seconds=11))
        lease = repo.get_lease(s, "schedule:7")
        assert lease.holder == "alive" and lease.acquired_at == T0 + timedelta(seconds=11)
        assert not repo.renew_lease(s, "schedule:7", "dead", 10, now=T0 + timedelta(seconds=12))
        assert not repo.release_lease(s, "schedule:7", "dead")
        assert repo.get_lease(s, "schedule:7").holder == "alive"


def test_racing_acquirers_get_the_lease_once(db_url):
    """Threads on their own connections race for one free lease: exactly one wins."""
    n, barrier, won = 6, threading.Barrier(6), []

    def grab(i):
        barrier.wait()
        with session_scope() as s:
            if repo.acquire_lease(s, "schedule:race", f"w{i}", 60):
                won.append(i)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    with session_scope(read_only=True) as s:
        assert repo.get_lease(s, "schedule:race").holder == f"w{won[0]}"


# -- passes --------------------------------------------------------------------------
def test_a_fire_time_gets_one_pass(db_url):
    with session_scope() as s:
        sc = _schedule(s)
        p = repo.start_pass(s, sc.id, T0, "a", 0)
        assert p is not None and p.status is PassStatus.running and p.fire_time == T0
        # Same fire from another scheduler: None, and this transaction is still usable.
        assert repo.start_pass(s, sc.id, T0, "b", 0) is None
        assert repo.start_pass(s, sc.id, T0 + timedelta(minutes=1), "b", 0) is not None
    with session_scope() as s:  # and in a later transaction, after the first committed
        assert repo.start_pass(s, sc.id, T0, "c", 0) is None
    with session_scope(read_only=True) as s:
        assert [(x.fire_time, x.holder) for x in repo.list_passes(s, schedule_id=sc.id)] == [
            (T0, "a"), (T0 + timedelta(minutes=1), "b")]
        assert [e.action for e in audit.list_events(s, entity_type="job_pass")] == ["pass.start", "pass.start"]
        assert audit.verify_chain(s).ok


def test_racing_schedulers_start_a_fire_once(db_url):
    with session_scope() as s:
        sc = _schedule(s)
    barrier, got, errors = threading.Barrier(4), [], []

    def fire(i):
        barrier.wait()
        try:
            with session_scope() as s:
                p = repo.start_pass(s, sc.id, T0, f"w{i}", 0)
                if p is not None:
                    got.append(p.holder)
        except Exception as exc:  # pragma: no cover - shown in the assertion
            errors.append(exc)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 1
    with session_scope(read_only=True) as s:
        assert len(repo.list_passes(s)) == 1


def test_finish_moves_the_schedule_on_only_after_success(db_url):
    with session_scope() as s:
        sc = _schedule(s)
        failed = repo.start_pass(s, sc.id, T0, "a", 0)
        repo.finish_pass(s, failed.id, PassStatus.failed, error_text="ValueError: no feedback")
        assert repo.get_schedule(s, sc.id).next_index == 0  # the next pass retries window 0
        ok = repo.start_pass(s, sc.id, T0 + timedelta(minutes=1), "a", 0)
        done = repo.finish_pass(s, ok.id, "succeeded", summary={"reports_created": 1, "at": T0})
        assert done.status is PassStatus.succeeded and done.summary == {"reports_created": 1, "at": T0.isoformat()}
        assert repo.get_schedule(s, sc.id).next_index == 1
        with pytest.raises(InvalidInput, match="already finished"):
            repo.finish_pass(s, ok.id, "failed")
        with pytest.raises(InvalidInput, match="final outcome"):
            repo.finish_pass(s, failed.id, "running")
    with session_scope(read_only=True) as s:
        assert [p.status for p in repo.list_passes(s, status="failed")] == [PassStatus.failed]
        assert [p.id for p in repo.list_passes(s, limit=1)] == [ok.id]


def test_stale_passes_are_abandoned_and_the_next_pass_proceeds(db_url):
    with session_scope() as s:
        sc = _schedule(s)
        old = repo.start_pass(s, sc.id, T0, "killed", 0)
        fresh = repo.start_pass(s, sc.id, T0 + timedelta(minutes=1), "alive", 0)
    with session_scope() as s:
        assert repo.mark_stale_passes(s, older_than=timedelta(seconds=60)) == []
        # `old`'s process was killed five minutes ago; `fresh` keeps beating.
        s.execute(update(PassRow).where(PassRow.id == old.id).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        repo.heartbeat_pass(s, fresh.id)
        assert repo.mark_stale_passes(s, older_than=timedelta(seconds=60)) == [old.id]
    with session_scope() as s:
        gone = repo.get_pass(s, old.id)
        assert gone.status is PassStatus.abandoned and "killed" in gone.error_text and gone.finished_at is not None
        nxt = repo.start_pass(s, sc.id, T0 + timedelta(minutes=2), "restarted", 0)
        assert nxt is not None
    with session_scope(read_only=True) as s:
        assert "pass.abandon" in [e.action for e in audit.list_events(s, entity_type="job_pass")]
        assert audit.verify_chain(s).ok


def test_deleting_a_schedule_keeps_its_passes(db_url):
    with session_scope() as s:
        sc = _schedule(s)
        p = repo.start_pass(s, sc.id, T0, "a", 0)
        repo.finish_pass(s, p.id, "succeeded")
        repo.delete_schedule(s, sc.id)
    with session_scope(read_only=True) as s:
        assert repo.get_pass(s, p.id).schedule_id is None


def test_a_pass_needs_a_schedule_and_an_aware_fire_time(db_url):
    with session_scope() as s:
        with pytest.raises(NotFound):
            repo.start_pass(s, 999, T0, "a", 0)
        sc = _schedule(s)
        with pytest.raises(InvalidInput, match="timezone-aware"):
            repo.start_pass(s, sc.id, T0.replace(tzinfo=None), "a", 0)


def test_racing_upserts_of_one_name_make_one_schedule(db_url):
    """Schedulers started at once store the same schedule: none fails, one row, one create event."""
    n, barrier, errors = 4, threading.Barrier(4), []

    def store(i):
        barrier.wait()
        try:
            with session_scope() as s:
                _schedule(s, "shared", per_window=100 + i)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope(read_only=True) as s:
        [sc] = repo.list_schedules(s)
        assert sc.name == "shared" and 100 <= sc.per_window < 100 + n
        actions = [e.action for e in audit.list_events(s, entity_type="schedule")]
        assert actions.count("schedule.create") == 1
        assert audit.verify_chain(s).ok


def test_two_creators_of_one_name(db_url):
    with session_scope() as s:
        _schedule(s)
    with pytest.raises(AlreadyExists), session_scope() as s:
        now = utcnow()
        s.add(ScheduleRow(name="default", cron="* * * * *", model="m", source="x", site="y", per_window=1,
                          enabled=True, next_index=0, created_by="t", created_at=now, updated_at=now))
