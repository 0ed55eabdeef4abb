"""The `subgroup` of an error report: validated like every field, part of the idempotency key, carried by the
entities, the audit trail, export and `decide reports` (table and --json); migration 0008 both ways."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cli.app import app
from cxr.errors import InvalidInput
from cxr.subgroup_key import describe, from_group, matches, parse
from decision import error_reports
from registry import audit, repo
from registry.export import export_all
from registry.session import current_revision, downgrade, get_engine, head_revision, session_scope, upgrade
from tests.registry import factories as f


@pytest.fixture
def v1(db_url):
    with session_scope() as s:
        return f.version(s)


def _ingest(*reports):
    with session_scope() as s:
        return error_reports.ingest(s, [error_reports.parse_report(r) for r in reports])


@pytest.mark.parametrize("subgroup", ["", "view=AP", "sex=F", "age_band=65+", "age_band=<40", "age_band=40-64",
                                      "sex=F&age_band=65+", "sex=M&age_band=40-64&view=PA"])
def test_canonical_subgroups_are_accepted_as_written(subgroup):
    assert error_reports.parse_report(f.report(subgroup=subgroup)).subgroup == subgroup


@pytest.mark.parametrize(("subgroup", "why"), [
    ("view=XR", "view must be one of AP, PA"),
    ("colour=red", "unknown attribute 'colour'"),
    ("site=site-b", "the site is the report's own `site` field"),
    ("view=AP&sex=F", "write it as 'sex=F&view=AP'"),
    ("sex=F&sex=M", "sex is given twice"),
    ("sex=unknown", "sex must be one of F, M"),
    ("age_band=old", "age_band must be a band"),
    ("age_band=65-40", "age_band must be a band"),
    ("view", "is not attribute=value"),
    ("view=AP&", "is not attribute=value"),
    (" view=AP", "unknown attribute"),
    ("x" * 129, "at most 128 characters"),
])
def test_a_bad_subgroup_is_refused_naming_the_field(subgroup, why):
    with pytest.raises(InvalidInput, match="subgroup") as err:
        error_reports.parse_report(f.report(subgroup=subgroup))
    assert err.value.field == "subgroup" and why in str(err.value), str(err.value)


def test_a_subgroup_must_be_text():
    with pytest.raises(InvalidInput) as err:
        error_reports.parse_report(f.report(subgroup=1))
    assert err.value.field == "subgroup"


def test_the_schema_describes_the_subgroup():
    prop = error_reports.json_schema()["properties"]["subgroup"]
    assert prop["type"] == "string" and "view=AP" in prop["description"]
    assert "subgroup" not in error_reports.json_schema().get("required", [])  # "" (the whole site) by default


def test_the_vocabulary_round_trips_the_subgroup_evaluation_groups():
    assert from_group("view", "AP") == "view=AP"
    assert from_group("sex & age_band", "F & 65+") == "sex=F&age_band=65+"
    assert from_group("site & view", "site-b & AP") == "view=AP"  # the site is the report's own field
    assert from_group("sex", "unknown") is None and from_group("site", "site-b") is None
    assert describe("view=AP") == "AP films" and describe("sex=F&age_band=65+") == "films of women aged 65+"
    band = parse("age_band=40-64")
    assert [matches(band, sex="F", age=a, view="PA") for a in (39.9, 40, 64.5, 65, float("nan"))] == \
        [False, True, True, False, False]


def test_a_subgroup_report_is_its_own_key_and_round_trips(v1):
    site = f.report(site="site-b")
    ap = f.report(site="site-b", subgroup="view=AP", value=0.41, counts={"tp": 5, "fp": 41, "tn": 59, "fn": 5})
    first = _ingest(site, ap)
    assert first.created == 2 and len(set(first.ids)) == 2  # same window, pathology, kind: two reports
    again = _ingest(ap, site)
    assert (again.created, again.existing) == (0, 2) and again.ids == first.ids[::-1]
    changed = {**ap, "notes": "changed"}
    with pytest.raises(InvalidInput, match="subgroup, pathology, kind, window"):
        _ingest(changed)
    with session_scope(read_only=True) as s:
        stored = {r.subgroup: r for r in repo.list_reports(s)}
        events = [e for e in audit.list_events(s) if e.action == "report.ingest"]
        exported = export_all(s)
    assert set(stored) == {"", "view=AP"} and stored["view=AP"].value == 0.41
    assert {e.new["subgroup"] for e in events} == {"", "view=AP"}
    assert {(r["site"], r["subgroup"]) for r in exported["reports"]} == {("site-b", ""), ("site-b", "view=AP")}
    json.dumps(exported)  # plain JSON values


def test_decide_reports_shows_the_subgroup(v1):
    _ingest(f.report(site="site-b", subgroup="view=AP"))
    runner = CliRunner()
    res = runner.invoke(app, ["reports", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["subgroup"] for r in json.loads(res.stdout)] == ["view=AP"]
    table = runner.invoke(app, ["reports"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "site-b · view=AP" in table.stdout, table.stdout


def test_decide_reports_filters_by_site_and_to_subgroup_reports(v1):
    _ingest(f.report(site="site-b"), f.report(site="site-b", subgroup="view=AP"),
            f.report(site="site-c", subgroup="sex=F"), f.report(site="site-c"))
    with session_scope(read_only=True) as s:
        assert [(r.site, r.subgroup) for r in repo.list_reports(s, site="site-b")] == [("site-b", ""),
                                                                                       ("site-b", "view=AP")]
        assert [(r.site, r.subgroup) for r in repo.list_reports(s, subgroups_only=True)] == [("site-b", "view=AP"),
                                                                                             ("site-c", "sex=F")]
        assert repo.list_reports(s, site="site-a") == []
    runner = CliRunner()
    res = runner.invoke(app, ["reports", "--site", "site-c", "--subgroups", "--json"])
    assert res.exit_code == 0, res.output
    assert [(r["site"], r["subgroup"]) for r in json.loads(res.stdout)] == [("site-c", "sex=F")]


def test_migration_0008_keeps_reports_and_links_and_refuses_to_drop_subgroup_reports(db_url, v1):
    ids = _ingest(f.report(site="site-b"), f.report(site="site-b", subgroup="view=AP")).ids
    with session_scope() as s:
        repo.create_decision(s, [ids[0]], "0" * 64, [{"treatment": "head_retrain"}], "head_retrain", "test")
    with pytest.raises(Exception, match="1 subgroup error report"):
        downgrade(db_url, "0007_notifications")
    assert current_revision(db_url) == head_revision()
    with get_engine(db_url).begin() as c:
        c.execute(text("DELETE FROM error_reports WHERE id = :id"), {"id": ids[1]})
    downgrade(db_url, "0007_notifications")
    with get_engine(db_url).connect() as c:
        cols = {r[0] for r in c.execute(text("SELECT * FROM error_reports")).cursor.description}
        links = c.execute(text("SELECT report_id FROM decision_reports")).scalars().all()
    assert "subgroup" not in cols and links == [ids[0]]
    upgrade(db_url)
    with session_scope(read_only=True) as s:
        (r,) = repo.list_reports(s)
        assert (r.id, r.subgroup) == (ids[0], "")  # an older report is about the whole site
        assert repo.list_decisions(s)[0].report_ids == [ids[0]]  # its decision still points at it
    again = _ingest(f.report(site="site-b", subgroup="view=AP"))  # the new key works after the round trip
    assert again.created == 1
