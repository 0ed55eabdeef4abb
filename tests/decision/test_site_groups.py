"""The site-group rule (`decision.site_groups.group_reports`): which reports are treated as one, which are not."""

from __future__ import annotations

import pytest

from decision.site_groups import GroupFacts, SiteGroup, group_reports


def _f(rid, site="site-b", version=7, level="input", tried=True):
    return GroupFacts(rid, site, version, level, tried)


def test_reports_at_one_site_on_one_version_with_one_shift_level_group():
    g = group_reports([_f(3), _f(1), _f(2)])
    assert g.groups == (SiteGroup("site-b", 7, "input", (1, 2, 3)),)
    assert g.alone == ()


def test_a_report_at_another_site_does_not_group():
    g = group_reports([_f(1), _f(2), _f(3, site="site-c")])
    assert [x.report_ids for x in g.groups] == [(1, 2)]
    assert g.alone == (3,)


def test_a_report_on_another_serving_version_does_not_group():
    g = group_reports([_f(1), _f(2), _f(3, version=8)])
    assert [x.report_ids for x in g.groups] == [(1, 2)]
    assert g.alone == (3,)


def test_a_report_under_another_diagnosis_level_does_not_group():
    g = group_reports([_f(1), _f(2), _f(3, level="feature"), _f(4, level="feature"), _f(5, level="output")])
    assert [(x.level, x.report_ids) for x in g.groups] == [("feature", (3, 4)), ("input", (1, 2))]
    assert g.alone == (5,)


def test_a_report_whose_cheap_rungs_were_not_tried_is_not_ready():
    g = group_reports([_f(1), _f(2, tried=False)])
    assert g.groups == ()
    assert g.alone == (1,)  # ready, no partner: it climbs alone; report 2 is in neither list


def test_no_diagnosis_or_no_site_never_groups():
    g = group_reports([_f(1, level=None), _f(2, level=None), _f(3, site=None), _f(4, site=None)])
    assert g.groups == () and g.alone == (1, 2, 3, 4)


def test_feature_level_groups_and_min_reports_is_honoured():
    facts = [_f(1, level="feature"), _f(2, level="feature"), _f(3, site="site-c"), _f(4, site="site-c"),
             _f(5, site="site-c")]
    g = group_reports(facts, min_reports=3)
    assert [(x.site, x.report_ids) for x in g.groups] == [("site-c", (3, 4, 5))]
    assert g.alone == (1, 2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        group_reports([_f(1)], min_reports=1)
    with pytest.raises(ValueError, match="twice"):
        group_reports([_f(1), _f(1, site="site-c")])
