"""The authorised baseline: the newest version a person put into production for a site, never the machine's own
gate promotions (else the baseline would creep with the chain it is meant to hold)."""

from __future__ import annotations

from registry import repo
from registry.entities import RunOutcome
from registry.repo_authorised import authorised_version
from registry.session import session_scope
from tests.registry import factories as f


def _gate_promotion(s, parent_id, payload, *, site="", held=False):
    """A candidate made from `parent_id` by an accepted run (held for a person and approved when `held`)."""
    d = repo.create_decision(s, [], "p" * 64, [{"treatment": "t"}], "t", "why")
    run = repo.start_run(s, d.id, "t", {}, parent_id)
    v = f.version(s, parent_id=parent_id, payload=payload)
    gate = {"gate": {"passed": True, "needs_approval": held}}
    repo.finish_run(s, run.id, RunOutcome.held if held else RunOutcome.accepted, v.id, 1.0, None, "", gate, {})
    if held:
        repo.settle_held_run(s, run.id, RunOutcome.accepted, reason="approved by a radiologist")
    repo.set_alias(s, "cxr", "production", v.id, reason="gate", site=site, run_id=run.id)
    return v


def test_a_chain_of_gate_promotions_keeps_the_registered_baseline_authorised(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline", actor="alice")
        v2 = _gate_promotion(s, v1.id, b"w2")
        v3 = _gate_promotion(s, v2.id, b"w3")
        a = authorised_version(s, v3.id, "site-a")
    assert (a.version_id, a.kind, a.actor, a.site) == (v1.id, "override", "alice", "")
    assert a.label == "cxr:1 (override by alice: baseline)"


def test_a_person_moves_the_authorised_baseline_per_site(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        repo.set_alias(s, "cxr", "production", v1.id, reason="baseline")
        v2 = _gate_promotion(s, v1.id, b"w2")
        v3 = _gate_promotion(s, v2.id, b"w3", site="site-a", held=True)  # a person approved it, for site-a
        at_a, at_b = authorised_version(s, v3.id, "site-a"), authorised_version(s, v3.id, "site-b")
        _gate_promotion(s, v2.id, b"w4")  # the machine moves every other site on
        repo.rollback(s, v2.id, reason="v4 misses effusions at night")  # a person, for every site
        after_b, after_a = authorised_version(s, v3.id, "site-b"), authorised_version(s, v3.id, "site-a")
    assert (at_a.version_id, at_a.kind, at_a.site) == (v3.id, "approval", "site-a")
    assert at_b.version_id == v1.id
    assert (after_b.version_id, after_b.kind, after_b.reason) == (v2.id, "rollback", "v4 misses effusions at night")
    assert after_a.version_id == v3.id  # site-a's own authorisation wins over the all-sites one


def test_without_a_person_s_grant_the_registered_root_is_authorised(db_url):
    with session_scope() as s:
        v1 = f.version(s)
        v2 = f.version(s, parent_id=v1.id, payload=b"w2")
        v3 = f.version(s, parent_id=v2.id, payload=b"w3")
        a = authorised_version(s, v3.id, "site-a")
    assert (a.version_id, a.kind, a.ref) == (v1.id, "root", "cxr:1")
