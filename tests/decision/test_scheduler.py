"""The scheduler: crontab parsing, one fire → at most one recorded pass, failures recorded and
the next pass going on, a real monitoring pass on the tiny registry, and two scheduler processes
on one PostgreSQL database running each pass once."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cxr.errors import InvalidInput
from decision.scheduler import Scheduler, cron_trigger
from registry import audit, repo
from registry.entities_jobs import PassStatus
from registry.session import dispose_engines, init_registry, session_scope
from tests import dates
from tests.conftest import build_tiny_home
from tests.monitoring import (
    assert_versions_complete,
    install_toy,
    scheduler_env,
    start_scheduler,
    wait_for,
    write_policy,
)

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
FIRE = dates.day(0, hours=6)  # a Monday


# -- crontab ------------------------------------------------------------------------------
@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("0 6 * * 1", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, 6, 0, tzinfo=UTC)),  # Monday
    ("0 6 * * 0", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 8, 6, 0, tzinfo=UTC)),  # 0 = Sunday
    ("0 6 * * 7", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 8, 6, 0, tzinfo=UTC)),  # 7 = Sunday
    ("0 6 * * 5-7", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 6, 6, 0, tzinfo=UTC)),  # Fri..Sun
    ("30 */6 * * *", datetime(2026, 3, 2, 7, 0, tzinfo=UTC), datetime(2026, 3, 2, 12, 30, tzinfo=UTC)),
    ("*/10 * * * * *", datetime(2026, 3, 2, 7, 0, 1, tzinfo=UTC), datetime(2026, 3, 2, 7, 0, 10, tzinfo=UTC)),
])
def test_crontab_follows_cron_not_apscheduler_weekday_numbers(expr, after, expected):
    assert cron_trigger(expr).get_next_fire_time(None, after) == expected


@pytest.mark.parametrize("expr", ["", "* * * *", "61 * * * *", "0 6 * * 8", "0 6 * * mon/0"])
def test_bad_crontab_is_refused_naming_cron(expr):
    with pytest.raises(InvalidInput) as err:
        cron_trigger(expr)
    assert err.value.field == "cron"


# -- one fire, with a pass function standing in for the monitoring pass --------------------
@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    init_registry(url)
    with session_scope(url) as s:
        repo.upsert_schedule(s, "weekly", cron="0 6 * * 1", model="cxr", source="phantom:site-b", site="site-b",
                             per_window=100)
    yield url
    dispose_engines()


def _sid(url):
    with session_scope(url, read_only=True) as s:
        return repo.get_schedule(s, "weekly").id


def test_a_fire_runs_once_and_moves_the_schedule_to_the_next_window(url):
    seen = []
    sched = Scheduler(url, pass_fn=lambda sc, i: seen.append(i) or {"week": i + 1}, holder="a")
    first = sched.run_scheduled_pass(_sid(url), FIRE)
    again = Scheduler(url, pass_fn=lambda sc, i: seen.append(i) or {}, holder="b").run_scheduled_pass(_sid(url), FIRE)
    nxt = sched.run_scheduled_pass(_sid(url), FIRE + timedelta(days=7))
    assert (first.ran, first.status, again.ran, nxt.ran) == (True, PassStatus.succeeded, False, True)
    assert again.reason == "another scheduler ran this fire time"
    assert seen == [0, 1]
    with session_scope(url, read_only=True) as s:
        passes = repo.list_passes(s)
        assert [(p.window_index, p.status, p.holder, p.summary) for p in passes] == [
            (0, PassStatus.succeeded, "a", {"week": 1}), (1, PassStatus.succeeded, "a", {"week": 2})]
        assert repo.get_schedule(s, "weekly").next_index == 2
        assert repo.get_lease(s, f"schedule:{_sid(url)}") is None  # released after each pass
        assert audit.verify_chain(s).ok


def test_a_crashing_pass_is_recorded_and_the_next_pass_proceeds(url):
    def boom(sc, i):
        raise RuntimeError("feedback store unreachable")

    failed = Scheduler(url, pass_fn=boom, holder="a").run_scheduled_pass(_sid(url), FIRE)
    assert failed.ran and failed.status is PassStatus.failed and "feedback store unreachable" in failed.reason
    ok = Scheduler(url, pass_fn=lambda sc, i: {"i": i}, holder="a").run_scheduled_pass(_sid(url), FIRE + timedelta(1))
    assert ok.status is PassStatus.succeeded
    with session_scope(url, read_only=True) as s:
        p1, p2 = repo.list_passes(s)
        assert (p1.status, p1.window_index, p2.status, p2.window_index) == (
            PassStatus.failed, 0, PassStatus.succeeded, 0)  # the failed window is read again
        assert "RuntimeError: feedback store unreachable" in p1.error_text


def test_a_held_lease_or_a_disabled_schedule_skips_the_fire(url):
    sid = _sid(url)
    with session_scope(url) as s:
        assert repo.acquire_lease(s, f"schedule:{sid}", "other", 60)
    held = Scheduler(url, pass_fn=lambda sc, i: {}, holder="a").run_scheduled_pass(sid, FIRE)
    assert not held.ran and held.reason == "another scheduler holds the lease"
    with session_scope(url) as s:
        repo.release_lease(s, f"schedule:{sid}", "other")
        repo.upsert_schedule(s, "weekly", cron="0 6 * * 1", model="cxr", source="phantom:site-b", site="site-b",
                             per_window=100, enabled=False)
    off = Scheduler(url, pass_fn=lambda sc, i: {}, holder="a").run_scheduled_pass(sid, FIRE)
    assert not off.ran and off.reason == "the schedule is disabled"
    with session_scope(url, read_only=True) as s:
        assert repo.list_passes(s) == []


def test_a_stale_running_pass_is_abandoned_by_the_next_fire(url):
    sid = _sid(url)
    with session_scope(url) as s:
        dead = repo.start_pass(s, sid, FIRE - timedelta(days=7), "killed-host:1", 0)
    sched = Scheduler(url, pass_fn=lambda sc, i: {}, holder="a", stale_seconds=0.01)
    time.sleep(0.05)
    assert sched.run_scheduled_pass(sid, FIRE).status is PassStatus.succeeded
    with session_scope(url, read_only=True) as s:
        assert repo.get_pass(s, dead.id).status is PassStatus.abandoned


def test_serve_runs_due_fires_from_the_stored_schedules(url):
    with session_scope(url) as s:
        repo.upsert_schedule(s, "weekly", cron="* * * * * *", model="cxr", source="phantom:site-b", site="site-b",
                             per_window=100)  # every second
    sched = Scheduler(url, pass_fn=lambda sc, i: {"i": i}, holder="a")
    assert sched.serve(max_passes=2, install_signals=False) == 0
    ran = [o for o in sched.outcomes if o.ran]
    assert len(ran) == 2 and ran[0].fire_time < ran[1].fire_time
    with session_scope(url, read_only=True) as s:
        assert [p.window_index for p in repo.list_passes(s)] == [0, 1]


# -- the real pass: feedback window → monitor → ingest → treat ----------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_scheduled_pass_monitors_and_treats_on_the_tiny_registry(tiny_home, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install_toy(tmp_path / "toy")))  # its entry point is found on sys.path
    monkeypatch.setenv("DECIDE_POLICY", str(write_policy(tmp_path / "policy.toml", strict_slos=True)))
    with session_scope() as s:
        sid = repo.upsert_schedule(s, "weekly", cron="0 6 * * 1", model="cxr", source="phantom:site-b",
                                   site="site-b", per_window=150).id
    out = Scheduler().run_scheduled_pass(sid, FIRE)
    assert out.status is PassStatus.succeeded, out.reason
    with session_scope(read_only=True) as s:
        [p] = repo.list_passes(s)
        assert p.summary["week"] == 1 and p.summary["reports_created"] >= 1
        assert {d["report_id"] for d in p.summary["decisions"]} <= set(p.summary["report_ids"])
        runs = [r for d in p.summary["decisions"] for r in d["runs"]]
        assert runs and {r["treatment"] for r in runs} == {"slow_toy"}
        assert repo.get_schedule(s, sid).next_index == 1
        assert [d.name for d in repo.list_datasets(s, site="site-b") if "week" in d.name] == [
            "feedback-site-b-week1"]
    assert_versions_complete()


def test_an_unlabelled_schedule_judges_its_windows_without_labels(tiny_home):
    with session_scope() as s:
        sid = repo.upsert_schedule(s, "label-free", cron="0 6 * * 1", model="cxr", source="phantom:site-e",
                                   site="site-e", per_window=150, unlabelled=True).id
        assert repo.get_schedule(s, sid).unlabelled
    out = Scheduler().run_scheduled_pass(sid, FIRE)
    assert out.status is PassStatus.succeeded, out.reason
    with session_scope(read_only=True) as s:
        [p] = repo.list_passes(s)
        [window] = repo.list_windows(s, site="site-e")
        assert [d.role.value for d in repo.list_datasets(s, site="site-e") if "week" in d.name] == ["unlabelled"]
    assert p.summary["unlabelled"] and p.summary["shifted"] and p.summary["window_id"] == window.id
    assert p.summary["report_id"] == window.report_id and window.n_studies == 150


# -- two scheduler processes, one PostgreSQL database ---------------------------------------
@pytest.fixture
def pg_url():
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set")
    admin_url = make_url(os.environ[PG_ENV])
    name = f"decide_sched_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    dispose_engines()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) schedule \d+: (?:pass \d+ (succeeded|failed)|skipped \((.*)\))")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("tiny-home")
def test_two_scheduler_processes_on_postgresql_run_each_pass_once(pg_url, tmp_path, monkeypatch):
    home = tmp_path / "pg-home"
    monkeypatch.setenv("DECIDE_HOME", str(home))
    build_tiny_home(home, pg_url)
    policy = write_policy(tmp_path / "policy.toml", strict_slos=True)
    env = scheduler_env(home, policy, install_toy(tmp_path / "toy"), DECIDE_DATABASE_URL=pg_url)
    procs = [start_scheduler(env, per_window=120), start_scheduler(env, per_window=120)]

    def passes_done():
        with session_scope(pg_url, read_only=True) as s:
            done = [p for p in repo.list_passes(s) if p.status is not PassStatus.running]
            return len(done) >= 4
    try:
        wait_for("four finished passes", passes_done, procs, limit=240)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outs)

    ran, skipped = Counter(), Counter()
    for out in outs:
        for line in out.splitlines():
            if m := _LINE.match(line.strip()):
                (ran if m.group(2) else skipped)[m.group(1)] += 1
    assert ran and all(n == 1 for n in ran.values()), ran  # no fire time ran in both processes
    assert skipped, "the two processes never competed for a fire"  # every 2 s, both see every fire

    with session_scope(pg_url, read_only=True) as s:
        passes = repo.list_passes(s)
        assert len({p.fire_time for p in passes}) == len(passes)
        ok = [p.window_index for p in passes if p.status is PassStatus.succeeded]
        assert ok == list(range(len(ok))) and len(ok) >= 4  # each feedback week monitored once, in order
        assert all(p.status is PassStatus.succeeded for p in passes), [(p.status, p.error_text) for p in passes]
        weeks = [d.name for d in repo.list_datasets(s, site="site-b") if "week" in d.name]
        assert len(weeks) == len(set(weeks)) == len(ok)
        by_report = Counter(rid for d in repo.list_decisions(s) if d.status.value != "cancelled"
                            for rid in d.report_ids)
        assert by_report and max(by_report.values()) == 1  # no report decided twice
        assert repo.get_schedule(s, "default").next_index == len(ok)
    assert_versions_complete(pg_url)
