"""`kill -9` of `decide run` at each step of the loop; then the registry is whole, and the next
`decide run --take-over` finishes the work.

Each case runs a real `decide run --yes` with `DECIDE_FAILPOINTS=POINT=kill`: the process sends itself
SIGKILL at that step (no handler, no rollback sent, no `finally`). The processes are forked from a
server that imported everything once (`tests/faults/forkserver.py`: the same entry point, minus the
imports); one case runs the installed `decide` script in a fresh interpreter to show it is the same.
Then: what it left is checked against what that step must leave (nothing of an uncommitted candidate,
a committed promotion stays), the invariants of `check_whole` hold, and a following
`decide run --take-over` (the stale time having passed), or a plain `decide run`, ends with the report
resolved by one decision and nothing left running. The same for an unexpected error (`raise`) at three
steps: the process exits, nothing is half-done.
"""
from __future__ import annotations

import signal

import pytest

from decision.engine import Engine
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from registry.session import session_scope
from tests.faults.fault_env import check_settled, check_whole, recover

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]

R = RunOutcome.running
#: what a process killed at each step leaves: (report, decision, runs, versions, production)
LEFT = {
    "claim": (ReportStatus.claimed, None, [], [1], "cxr:1"),
    "decision": (ReportStatus.decided, DecisionStatus.planned, [], [1], "cxr:1"),
    "treatment_start": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "in_treatment": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "evaluation": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "gate": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "blob_write": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "registration": (ReportStatus.decided, DecisionStatus.running, [R], [1], "cxr:1"),
    "promotion": (ReportStatus.decided, DecisionStatus.running, [RunOutcome.accepted], [1, 2], "cxr:2"),
}


def _left(st):
    [rep] = st.reports
    return (rep.status, st.decisions[-1].status if st.decisions else None, [r.outcome for r in st.runs],
            [v.version for v in st.versions], st.production)


@pytest.mark.parametrize("point", list(LEFT))
def test_kill_at_each_step_then_take_over(fault_home, point):
    proc = fault_home.decide("run", "--yes", failpoints=f"{point}=kill")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-4000:]
    left = check_whole(fault_home)
    assert _left(left) == LEFT[point]

    summary = recover(fault_home)
    st = check_settled(fault_home, left.reports[0].id)
    if point == "promotion":  # the promotion had committed: the report is resolved, not treated again
        assert [r.id for r in st.runs] == [r.id for r in left.runs] and summary["decisions"] == []
        assert [d.id for d in st.decisions] == [left.decisions[0].id]
    else:
        assert [d["status"] for d in summary["decisions"]] == ["succeeded"]
        assert st.production == "cxr:2"
    for r in left.runs:  # the killed process's run: taken over
        if r.outcome == RunOutcome.running:
            assert next(x for x in st.runs if x.id == r.id).outcome == RunOutcome.abandoned


@pytest.mark.parametrize("fault_home", ["sqlite"], indirect=True)  # ~20 s of imports here: one backend
def test_kill_of_a_fresh_decide_process(fault_home):
    proc = fault_home.decide_fresh("run", "--yes", failpoints="registration=kill")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-4000:]
    assert _left(check_whole(fault_home)) == LEFT["registration"]
    recover(fault_home)
    check_settled(fault_home, 1)


@pytest.mark.parametrize("point", ["claim", "in_treatment", "promotion"])
def test_kill_then_a_plain_run_after_the_stale_time(fault_home, point):
    # both processes' stale time is 1 ms: the claim's lease, the run's heartbeat, the decision's last step
    proc = fault_home.decide("run", "--yes", failpoints=f"{point}=kill", DECIDE_STALE_SECONDS="0.001")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-4000:]
    left = check_whole(fault_home)
    recover(fault_home, take_over=False)
    check_settled(fault_home, left.reports[0].id)


@pytest.mark.parametrize("point", ["treatment_start", "registration", "promotion"])
def test_an_unexpected_error_at_a_step_leaves_nothing_half_done(fault_home, point):
    proc = fault_home.decide("run", "--yes", failpoints=f"{point}=raise")
    assert proc.returncode != 0 and f"failpoint {point}" in proc.stdout, proc.stdout[-4000:]
    left = check_whole(fault_home)
    recover(fault_home)
    check_settled(fault_home, left.reports[0].id)


def test_taking_over_a_run_whose_decision_was_closed_leaves_its_report_to_the_new_decision(fault_home):
    # an error right after the run started: the process closes the decision and reopens the report, but
    # its run stays `running` until a pass sees no heartbeat
    proc = fault_home.decide("run", "--yes", failpoints="treatment_start=raise")
    assert proc.returncode == 1, proc.stdout[-4000:]
    st = check_whole(fault_home)
    [old] = st.runs
    assert (old.outcome, st.decisions[0].status, st.reports[0].status) == (
        RunOutcome.running, DecisionStatus.cancelled, ReportStatus.open)
    # another pass (the stale time not passed) plans the report again; this time a person must approve
    raw = load_policy(fault_home.policy).model_dump(mode="json")
    raw["treatments"]["fault_toy"]["needs_approval"] = True
    again = Engine(None, fault_home.home, parse_policy(raw), worker="second").run_pass()
    assert again.abandoned_runs == [] and [d.status for d in again.decisions] == [DecisionStatus.awaiting_approval]
    # the old run is taken over later: its decision was closed already, the report is not its to reopen
    summary = recover(fault_home)
    assert summary["abandoned_runs"] == [old.id] and summary["decisions"] == []
    st = check_whole(fault_home)
    assert [r.status for r in st.reports] == [ReportStatus.decided]
    assert st.decisions[-1].id == again.decisions[0].decision_id
    assert st.decisions[-1].status == DecisionStatus.awaiting_approval


def test_a_decision_left_running_after_a_held_candidate_waits_for_a_person(fault_home):
    # what a process killed at `promotion` leaves when the gate held its candidate for a person
    with session_scope(fault_home.url) as s:
        [report] = repo.claim_reports(s, "dead-worker", limit=1)
        d = repo.create_decision(s, [report.id], "p" * 64, [{"treatment": "fault_toy"}], "fault_toy", "why",
                                 DecisionStatus.running)
        repo.set_report_status(s, report.id, ReportStatus.decided, reason=f"decision {d.id}")
        run = repo.start_run(s, d.id, "fault_toy", {}, 1)
        keep = ("pathology", "auroc", "auroc_lo", "auroc_hi", "sensitivity", "specificity", "ppv", "f1", "threshold",
                "n_pos", "n_neg")
        rows: dict[int, list[dict]] = {}
        for e in repo.list_evaluations(s, 1):  # the parent's numbers stand in for the candidate's
            rows.setdefault(e.dataset_id, []).append({k: getattr(e, k) for k in keep})
        version = repo.derive_version(s, 1, thresholds={"Effusion": 0.9}, treatment_run_id=run.id, decision_id=d.id,
                                      evaluations=rows, reason="held candidate")
        repo.finish_run(s, run.id, RunOutcome.held, version.id, 1.0)
    summary = recover(fault_home)
    assert summary["decisions"] == []
    st = check_whole(fault_home)
    assert [x.status for x in st.decisions] == [DecisionStatus.awaiting_approval]
    assert [r.status for r in st.reports] == [ReportStatus.decided] and st.production == "cxr:1"
