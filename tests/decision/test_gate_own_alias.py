"""A report from a site with its own production alias: its candidate can move production@site alone, so no
other site's check binds it (docs/gate-lineage.md, docs/sites.md)."""

from __future__ import annotations

from decision.gate import judge_sites
from tests.decision.test_gate_exact import A_BROKEN, _policy, _report, _sites


def test_a_report_from_a_site_with_its_own_production_binds_no_other_site():
    """Its candidate can only move production@site-b: another site's failing check (here site-a's SLO, as a
    parent's harm there would be inherited) is recorded, not binding — even without site-scoped promotion."""
    result = judge_sites(_report(), _sites(a=A_BROKEN), _policy(site_scoped_promotion=False),
                         own_alias_sites=frozenset({"site-b"}))
    assert (result.passed, result.scope, result.site) == (True, "site", "site-b")
    there = [c for c in result.checks if c.name.endswith("@eval-a")]
    assert any(not c.passed for c in there)
    assert there and all(not c.binding and c.detail.endswith(" (not binding: this promotion moves "
                                                             "production@site-b only)") for c in there)
    assert all(c.binding for c in result.checks if c.name.endswith("@eval-b"))
    followed = judge_sites(_report(), _sites(a=A_BROKEN), _policy(site_scoped_promotion=False))
    assert not followed.passed  # without its own alias, site-b's candidate would serve site-a too
