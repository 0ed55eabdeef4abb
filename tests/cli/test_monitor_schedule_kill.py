"""SIGKILL `decide monitor schedule` during a treatment, start it again: nothing is lost or half-written,
and the restarted scheduler resumes the killed run's decision (the same decision, the treatment run again).

The home is the tiny real registry (tests/conftest.py); the treatment is the toy plugin of
tests/monitoring.py: the first time it runs it drops a marker file and sleeps, and the kill
lands there. The policy lists only the toy, so the engine chooses it.
"""

from __future__ import annotations

import signal

import pytest

from registry import repo
from registry.entities import RunOutcome
from registry.entities_jobs import PassStatus
from registry.session import session_scope
from tests.monitoring import (
    TOY_NAME,
    assert_versions_complete,
    ingest_report,
    install_toy,
    scheduler_env,
    start_scheduler,
    wait_for,
    write_policy,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-home")]


def _run_ids(outcome: RunOutcome | None = None) -> list[int]:
    with session_scope(read_only=True) as s:
        return [r.id for r in repo.list_runs(s) if outcome is None or r.outcome == outcome]


def test_sigkill_during_a_treatment_then_restart(tiny_home, tmp_path):
    policy = write_policy(tmp_path / "policy.toml", strict_slos=False)
    report_id = ingest_report()
    marker = tmp_path / "toy-started"
    # a dead holder's lease and heartbeats count as gone after 3 s (the default is 90 s)
    env = scheduler_env(tiny_home.home, policy, install_toy(tmp_path / "toy"), SLOW_TOY_MARKER=str(marker),
                        DECIDE_STALE_SECONDS="3")

    first = start_scheduler(env)
    try:
        killed_run = wait_for("the toy treatment to start",
                              lambda: marker.exists() and _run_ids(RunOutcome.running), [first])[0]
    finally:
        first.kill()  # SIGKILL: no handler runs, nothing is cleaned up
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    with session_scope(read_only=True) as s:
        assert repo.get_run(s, killed_run).outcome is RunOutcome.running  # as the killed process left it
        [killed_pass] = repo.list_passes(s)
        assert killed_pass.status is PassStatus.running
        assert [v.version for v in repo.list_versions(s, "cxr")] == [1]

    second = start_scheduler(env)
    try:
        def redone():
            with session_scope(read_only=True) as s:
                done = [r for r in repo.list_runs(s) if r.id != killed_run and r.outcome != RunOutcome.running]
                passes = [p for p in repo.list_passes(s) if p.id != killed_pass.id
                          and p.status is PassStatus.succeeded]
                return done and passes
        wait_for("the report to be treated again", redone, [second])
    finally:
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out[-4000:]

    with session_scope(read_only=True) as s:
        run = repo.get_run(s, killed_run)
        assert run.outcome in (RunOutcome.abandoned, RunOutcome.failed), run
        assert repo.get_pass(s, killed_pass.id).status is PassStatus.abandoned
        # the killed run's decision was taken over and resumed, not replaced by a second decision
        assert [d.id for d in repo.list_decisions(s) if report_id in d.report_ids] == [run.decision_id]
        assert repo.get_decision(s, run.decision_id).status.value != "cancelled"
        retried = [r for r in repo.list_runs(s, decision_id=run.decision_id) if r.id != killed_run]
        assert [r.treatment for r in retried] == [TOY_NAME] and retried[0].outcome != RunOutcome.running
        assert repo.get_report(s, report_id).status.value != "claimed"
        assert all(p.status is not PassStatus.running for p in repo.list_passes(s))  # SIGTERM let the pass end
    assert_versions_complete()
