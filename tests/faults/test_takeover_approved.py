"""An approval survives `kill -9` during the approved treatment: the take-over resumes the same decision.

The ladder has two rungs: `cheap_toy` (its candidate makes the false positives worse: rejected) and
`approved_toy` (the policy asks a person to approve it; its candidate passes the gate). A real
`decide run` stops at `approved_toy` awaiting approval; a second person approves; a second real
`decide run` is killed with SIGKILL inside the approved treatment (the `in_treatment` failpoint).
`decide run --take-over` right after is refused — the run beat moments ago — and says when a take-over
will be possible instead of recommending the flag just given. The same command once two heartbeats have
passed (its clock moved a minute on, as time passing) takes the run over and resumes the same decision
at the same rung with its approval: the approved treatment runs, the rejected rung below it does not run
again, and the report ends with one decision, resolved.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from registry import repo
from registry.entities import DecisionStatus, ReportStatus, RunOutcome, Verdict
from registry.session import session_scope
from tests.faults.fault_env import ROOT, ForkServer, check_settled, check_whole
from tests.toy_plugins import install_plugin

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]

TOYS = """
    import numpy as np

    from treatments.base import TreatmentResult

    class Cheap:
        name = "cheap_toy"
        fixes = frozenset({"false_positives"})
        head_only = True

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            # every study positive: the false-positive rate gets worse, so the gate rejects the candidate
            return TreatmentResult(thresholds={**ctx.thresholds, ctx.report.pathology: 0.0}, notes="cheap toy")

    class Approved:
        name = "approved_toy"
        fixes = frozenset({"false_positives"})
        head_only = True

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            bias = np.asarray(ctx.head_bias, dtype=np.float32) + np.float32(1e-6)
            return TreatmentResult(thresholds=dict(ctx.thresholds), head_bias=bias, notes="approved toy")
"""
POLICY = """\
name = "takeover"
[treatments.cheap_toy]
prior_cost = 0.1
fixes = ["false_positives"]
p_success_default = 0.9
[treatments.approved_toy]
prior_cost = 1.0
fixes = ["false_positives"]
p_success_default = 0.9
needs_approval = true
[approvals]
four_eyes = true
[slos.default]
"""


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    where = tmp_path_factory.mktemp("takeover-toys")
    install_plugin(where, TOYS, "takeover_toys", "cheap_toy", cls="Cheap")
    # a second entry point in the same distribution
    ep = where / "takeover_toys-0.1.dist-info" / "entry_points.txt"
    ep.write_text(ep.read_text() + "approved_toy = takeover_toys:Approved\n")
    (where / "policy.toml").write_text(POLICY)
    return where


@pytest.fixture(scope="module")
def toy_server(toys):
    """A fork server that imports these toys (the suite's own server knows only `fault_toy`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(toys), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("DECIDE_FAILPOINTS", None)
    server = ForkServer(env)
    yield server
    server.close()


def _decision_of(fh, report_id: int):
    with session_scope(fh.url, read_only=True) as s:
        mine = [d for d in repo.list_decisions(s) if report_id in d.report_ids]
        runs = {d.id: repo.list_runs(s, decision_id=d.id) for d in mine}
    return mine, runs


def test_a_run_killed_during_an_approved_treatment_resumes_the_same_decision(fault_home, toys, toy_server):
    fh = dataclasses.replace(fault_home, toy_dir=toys, policy=toys / "policy.toml", server=toy_server)
    report_id = check_whole(fh).reports[0].id

    first = fh.decide("run", "--yes")  # cheap_toy rejected, then approved_toy waits for a person
    assert first.returncode == 0, first.stdout[-4000:]
    [d], runs = _decision_of(fh, report_id)
    assert (d.status, d.chosen) == (DecisionStatus.awaiting_approval, "approved_toy"), first.stdout[-4000:]
    assert [(r.treatment, r.outcome) for r in runs[d.id]] == [("cheap_toy", RunOutcome.rejected)]
    with session_scope(fh.url) as s:  # four-eyes: another person than the decision's creator approves
        repo.approve_decision(s, d.id, actor="reviewer", reason="checked the augmentation plan", four_eyes=True)

    killed = fh.decide("run", "--yes", failpoints="in_treatment=kill")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-4000:]
    left = check_whole(fh)
    [dead] = [r for r in left.runs if r.outcome == RunOutcome.running]
    assert dead.treatment == "approved_toy" and dead.decision_id == d.id

    # at once: the run beat moments ago, so it may be alive; the operator is told when to run again
    early = fh.decide("run", "--yes", "--take-over", DECIDE_ACTOR="operator-b")
    assert early.returncode == 0, early.stdout[-4000:]
    said = " ".join(early.stdout.split())
    assert f"run {dead.id} is alive" in said and "take-over possible in" in said and "run again then" in said, said
    assert "`decide run --take-over` now" not in said, said
    assert check_whole(fh).runs == left.runs  # nothing was taken over

    # a minute later (two heartbeats missed): taken over, and the same decision carries on
    late = fh.decide("run", "--yes", "--take-over", DECIDE_ACTOR="operator-b", FAULTS_CLOCK_OFFSET_S="60")
    assert late.returncode == 0, late.stdout[-4000:]
    st = check_settled(fh, report_id)
    [after], runs = _decision_of(fh, report_id)  # one decision for the report, start to end
    assert (after.id, after.status) == (d.id, DecisionStatus.succeeded), late.stdout[-4000:]
    assert [(r.treatment, r.outcome) for r in runs[d.id]] == [
        ("cheap_toy", RunOutcome.rejected),  # not run again: it was rejected on this parent
        ("approved_toy", RunOutcome.abandoned),  # the killed process's run
        ("approved_toy", RunOutcome.accepted),  # the approved treatment, resumed
    ]
    assert [(a.actor, a.verdict) for a in after.approvals] == [("reviewer", Verdict.approved)]
    assert st.production == next(v.ref for v in st.versions if v.id == runs[d.id][-1].output_version_id)
    assert [r.status for r in st.reports] == [ReportStatus.resolved]
    with session_scope(fh.url, read_only=True) as s:
        events = repo.list_events(s, entity_type="decision", entity_id=d.id)
    [resume] = [e for e in events if e.action == "decision.resume"]
    assert resume.actor == "operator-b" and resume.new["chosen"] == "approved_toy"
    assert f"run {dead.id} (approved_toy)" in resume.reason and "approved by reviewer" in resume.reason
    assert "decision.status" in [e.action for e in events if e.seq > resume.seq]  # carried on afterwards
    assert not [e for e in events if e.action == "decision.status" and e.new.get("status") == "cancelled"]
