"""Clocks that jump. Liveness is a heartbeat's age on the checking pass's clock; what that protects and
what it cannot, each shown with a real worker process (a `decide run` stopped inside its treatment).

* A worker whose clock runs ahead writes heartbeats "in the future". A concurrent pass (right clock)
  sees them as young: it takes nothing over, plain or `--take-over` — the age comparison protects it.
* The same worker dying leaves a heartbeat a year ahead: it must not keep its run alive for a year.
  `mark_abandoned_runs` does not believe a heartbeat more than a few seconds ahead: it sets it back to
  the checking pass's now, so the run is taken over one stale time later unless it beats again.
* A pass whose own clock jumped ahead sees every heartbeat as old and takes over a live run: no clock
  comparison can prevent that. What protects the registry is the fence: the live worker's late record
  of its run is refused (`RunFinished`), nothing of its candidate is registered, and it leaves the
  decision — which the other pass resumed — and its report alone.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest

from cxr import clock
from decision.engine import Engine
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests.faults.fault_env import check_settled, check_whole, recover

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]
HOUR, YEAR = 3600, 365 * 24 * 3600


def _stopped_in_treatment(fh, tmp_path, **env):
    """A `decide run` stopped inside its treatment (its run `running`, its heartbeat thread beating)."""
    release = tmp_path / "release"
    child = fh.start("run", "--yes", failpoints=f"in_treatment=wait:{release}", **env)
    end = time.monotonic() + 180
    while not os.path.exists(f"{release}.waiting"):
        assert child.alive(), child.wait().stdout[-4000:]
        assert time.monotonic() < end, "the worker never reached its treatment"
        time.sleep(0.1)
    with session_scope(fh.url, read_only=True) as s:
        [run] = repo.running_runs(s)
    return child, release, run


def test_a_worker_whose_clock_runs_ahead_keeps_its_live_run(fault_home, tmp_path):
    child, release, run = _stopped_in_treatment(fault_home, tmp_path, FAULTS_CLOCK_OFFSET_S=str(HOUR))
    assert run.heartbeat_at > clock.now() + timedelta(minutes=50)  # written by the fast clock
    engine = Engine.from_settings()
    take_over = engine.run_pass(take_over=True)
    assert take_over.refused_takeover == [run.id] and take_over.abandoned_runs == []
    plain = engine.run_pass()
    assert plain.abandoned_runs == [] and [r.run_id for r in plain.live_runs] == [run.id]
    release.touch()
    proc = child.wait()
    assert proc.returncode == 0, proc.stdout[-4000:]
    st = check_settled(fault_home, 1)
    assert [(r.id, r.outcome) for r in st.runs] == [(run.id, RunOutcome.accepted)]  # its own outcome


def test_a_heartbeat_from_the_future_does_not_keep_a_dead_run_alive(fault_home):
    proc = fault_home.decide("run", "--yes", failpoints="in_treatment=kill", FAULTS_CLOCK_OFFSET_S=str(YEAR))
    assert proc.returncode < 0, proc.stdout[-4000:]
    with session_scope(fault_home.url, read_only=True) as s:
        [run] = repo.running_runs(s)
    assert run.heartbeat_at > clock.now() + timedelta(days=300)
    first = recover(fault_home)  # a year ahead is not believed: set back to now, not taken over yet
    assert first["abandoned_runs"] == [] and first["refused_takeover"] == [run.id]
    with session_scope(fault_home.url, read_only=True) as s:
        assert repo.get_run(s, run.id).heartbeat_at <= clock.now()
    second = recover(fault_home)  # one stale time later (here 1 ms): taken over, and the work redone
    assert second["abandoned_runs"] == [run.id]
    check_settled(fault_home, 1)


@pytest.mark.parametrize("then", ["finishes", "is interrupted"])
def test_a_pass_whose_clock_jumped_takes_over_a_live_run_but_the_worker_is_fenced(fault_home, tmp_path, then):
    child, release, run = _stopped_in_treatment(fault_home, tmp_path)

    # The other pass's clock jumped two hours ahead: the live run looks dead to it, and it takes the
    # decision over and resumes it; here its policy needs a person's approval, so it waits for one.
    raw = load_policy(fault_home.policy).model_dump(mode="json")
    raw["treatments"]["fault_toy"]["needs_approval"] = True
    with clock.moved(timedelta(hours=2)):
        jumped = Engine(None, fault_home.home, parse_policy(raw), worker="jumped-clock").run_pass()
    assert jumped.abandoned_runs == [run.id]
    [taken] = jumped.decisions
    assert (taken.decision_id, taken.status) == (run.decision_id, DecisionStatus.awaiting_approval)

    if then == "finishes":  # the live worker finishes its treatment and tries to record its candidate
        release.touch()
        proc = child.wait()
        assert proc.returncode == 0 and "taken over by another pass" in proc.stdout, proc.stdout[-4000:]
    else:  # Ctrl-C during its treatment: it records the interruption, on a decision no longer its own
        os.kill(child.pid, signal.SIGINT)
        proc = child.wait()
        assert proc.returncode == 130 and "interrupted" in proc.stdout, proc.stdout[-4000:]
    st = check_whole(fault_home)  # not decided twice: the decision is the other pass's alone
    assert [v.version for v in st.versions] == [1] and st.production == "cxr:1"  # its candidate: refused
    assert next(r for r in st.runs if r.id == run.id).outcome == RunOutcome.abandoned
    assert [r.status for r in st.reports] == [ReportStatus.decided]
    assert {d.id: d.status for d in st.decisions} == {run.decision_id: DecisionStatus.awaiting_approval}

    with session_scope(fault_home.url) as s:  # a person approves; the next pass finishes the work
        repo.approve_decision(s, taken.decision_id, actor="reviewer", reason="checked the candidate plan")
    recover(fault_home)
    st = check_settled(fault_home, 1)
    assert [d.id for d in st.decisions if d.status == DecisionStatus.succeeded] == [taken.decision_id]
