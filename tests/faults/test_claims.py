"""Claims and fences: a claim whose worker is gone is released (after its lease, or at once by
`--take-over` once it is older than two heartbeats), and a worker whose claim was released meanwhile
never acts on it — the claim is fenced by a row lock when the decision is recorded; likewise no run
starts on a decision another pass has finished."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

from cxr.errors import InvalidInput
from decision.engine import Engine
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import DecisionStatus, ReportStatus
from registry.models import ReportRow
from registry.session import session_scope
from tests.faults.fault_env import check_settled, check_whole

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]


def _approval_policy(fh):
    raw = load_policy(fh.policy).model_dump(mode="json")
    raw["treatments"]["fault_toy"]["needs_approval"] = True
    return parse_policy(raw)


def test_a_claim_released_meanwhile_is_not_acted_on_by_its_old_holder(fault_home, tmp_path):
    release = tmp_path / "release"
    child = fault_home.start("run", "--yes", failpoints=f"claim=wait:{release}")
    end = time.monotonic() + 180
    while not os.path.exists(f"{release}.waiting"):
        assert child.alive() and time.monotonic() < end, child.wait().stdout[-4000:]
        time.sleep(0.1)
    # another pass takes the claim over (its stale time: 1 ms) and plans the report; a person must approve
    other = Engine(None, fault_home.home, _approval_policy(fault_home), worker="other")
    taken = other.run_pass(take_over=True, stale_after=timedelta(milliseconds=1))
    assert taken.released_claims == 1 and [d.status for d in taken.decisions] == [DecisionStatus.awaiting_approval]
    release.touch()  # the first worker goes on with the report it had claimed
    proc = child.wait()
    assert proc.returncode == 0, proc.stdout[-4000:]
    st = check_whole(fault_home)  # not decided twice
    assert [d.id for d in st.decisions] == [taken.decisions[0].decision_id]
    assert [r.status for r in st.reports] == [ReportStatus.decided]


def test_take_over_releases_a_silent_claim_before_its_lease_ends(fault_home):
    with session_scope(fault_home.url) as s:
        [claimed] = repo.claim_reports(s, "dead-worker", limit=1, lease_seconds=90)
    with session_scope(fault_home.url) as s:  # claimed a minute ago; its lease runs for 30 s more
        row = s.get(ReportRow, claimed.id)
        row.claimed_at -= timedelta(seconds=60)
        row.claim_expires_at -= timedelta(seconds=60)
    engine = Engine.from_settings()
    plain = engine.run_pass()
    assert plain.released_claims == 0 and plain.decisions == []
    take_over = engine.run_pass(take_over=True)  # older than two heartbeats: its worker is gone
    assert take_over.released_claims == 1 and [d.status for d in take_over.decisions] == [DecisionStatus.succeeded]
    check_settled(fault_home, claimed.id)


def test_no_run_starts_on_a_decision_finished_meanwhile(fault_home):
    with session_scope(fault_home.url) as s:
        d = repo.create_decision(s, [1], "p" * 64, [{"treatment": "fault_toy"}], "fault_toy", "why")
        repo.set_decision_status(s, d.id, DecisionStatus.cancelled, reason="taken over")
    with pytest.raises(InvalidInput, match=r"cancelled \(final\): no treatment may start"), \
            session_scope(fault_home.url) as s:
        repo.start_run(s, d.id, "fault_toy", {}, 1)
    with session_scope(fault_home.url, read_only=True) as s:
        assert repo.list_runs(s) == []
