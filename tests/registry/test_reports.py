"""Error reports: validation (pydantic + registry), all-or-nothing files, idempotent ingest, claims."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from cxr.errors import InvalidInput
from decision import error_reports
from registry import audit, repo
from registry.entities import ReportStatus
from registry.models import utcnow
from registry.session import session_scope
from tests import dates
from tests.registry import factories as f


@pytest.fixture
def v1(db_url):
    with session_scope() as s:
        return f.version(s)


def _line(**kw) -> str:
    return json.dumps(f.report(**kw))


@pytest.mark.parametrize(("change", "field"), [
    ({"counts": {"tp": 1, "fp": -1, "tn": 0, "fn": 0}}, "counts.fp"),
    ({"value": "NaN"}, "value"),
    ({"version": "1"}, "version"),
    ({"counts": {"tp": 1.5, "fp": 1, "tn": 0, "fn": 0}}, "counts.tp"),
    ({"site": "x" * 65}, "site"),
    ({"notes": "n" * 2001}, "notes"),
    ({"kind": "bad_vibes"}, "kind"),
    ({"surprise": 1}, "surprise"),
    ({"window_start": f"{dates.ymd(dates.day(0))}T00:00:00"}, "window_start"),  # no zone
    ({"window_start": dates.day(31).isoformat()}, "line 1: "),  # after its end
    ({"cases": [{"image_id": "a", "score": 1.2}]}, "cases.0.score"),
    ({"cases": [{"image_id": "a", "score": 0.2}] * 501}, "cases"),
])
def test_malformed_reports_name_the_field(change, field):
    line = json.dumps({**f.report(), **change}).replace('"NaN"', "NaN")
    with pytest.raises(InvalidInput) as err:
        error_reports.parse_lines([line])
    assert str(err.value).startswith("line 1: ") and field in str(err.value)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_schema_is_json_schema():
    schema = error_reports.json_schema()
    assert schema["title"] == "ErrorReport" and schema["additionalProperties"] is False
    assert {"model", "version", "pathology", "kind", "counts", "window_start"} <= set(schema["required"])


def test_ingest_file_and_reingest_is_a_no_op(v1, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([_line(day=0), "", _line(day=1, pathology="Cardiomegaly")]) + "\n")
    with session_scope() as s:
        first = error_reports.ingest_file(s, path)
    with session_scope() as s:
        again = error_reports.ingest_file(s, path)
    assert (first.created, first.existing) == (2, 0)
    assert again.ids == first.ids and (again.created, again.existing) == (0, 2)
    with session_scope(read_only=True) as s:
        rows = repo.list_reports(s, status="open")
        assert len(rows) == 2 and rows[0].source == "monitor" and rows[0].counts["fp"] == 30
        assert rows[0].window_start.tzinfo is not None and rows[0].cases[0]["image_id"] == "img-1"
        assert len(audit.list_events(s, entity_type="error_report")) == 2


def test_duplicates_within_one_batch_share_an_id(v1):
    r = error_reports.parse_report(_line())
    with session_scope() as s:
        res = error_reports.ingest(s, [r, r])
    assert res.ids[0] == res.ids[1] and res.created == 1
    with session_scope() as s:  # one known, one new
        mixed = error_reports.ingest(s, [error_reports.parse_report(_line(day=5)), r])
    assert mixed.ids[1] == res.ids[0] and (mixed.created, mixed.existing) == (1, 1)


@pytest.mark.parametrize(("bad", "field"), [
    ({"version": 7}, "line 2: version"),
    ({"model": "nope"}, "line 2: version"),
    ({"pathology": "Nodule"}, "line 2: pathology"),
])
def test_registry_checks_refuse_the_whole_file(v1, tmp_path, bad, field):
    path = tmp_path / "r.jsonl"
    path.write_text(_line(day=0) + "\n" + json.dumps(f.report(day=1, **bad)) + "\n" + _line(day=2) + "\n")
    with pytest.raises(InvalidInput) as err, session_scope() as s:
        error_reports.ingest_file(s, path)
    assert str(err.value).startswith(field)
    with session_scope(read_only=True) as s:
        assert repo.list_reports(s) == [] and audit.list_events(s, entity_type="error_report") == []


def test_bulk_ingest_many(v1):
    parsed = [error_reports.parse_report(_line(day=i % 50, site=f"site-{i // 50}")) for i in range(600)]
    with session_scope() as s:
        res = error_reports.ingest(s, parsed)
    assert res.created == 600 and len(set(res.ids)) == 600


def _seed(n: int) -> list[int]:
    with session_scope() as s:
        return error_reports.ingest(s, [error_reports.parse_report(_line(day=i)) for i in range(n)]).ids


def test_claim_release_and_transitions(v1):
    ids = _seed(5)
    with session_scope() as s:
        got = repo.claim_reports(s, "w1", limit=3, lease_seconds=60)
    assert [r.id for r in got] == ids[:3] and all(r.claimed_by == "w1" for r in got)
    assert got[0].claim_expires_at > got[0].claimed_at
    with session_scope() as s:
        assert [r.id for r in repo.claim_reports(s, "w2", limit=10)] == ids[3:]
        assert repo.claim_reports(s, "w3", limit=10) == []
    with session_scope() as s:
        released = repo.release_expired_claims(s, now=utcnow() + timedelta(seconds=120))
    assert released == ids[:3]  # w1's lease ran out; w2's (one hour) did not
    with session_scope() as s:
        repo.set_report_status(s, ids[3], "decided", reason="decision 1")
        assert repo.set_report_status(s, ids[3], "resolved").status is ReportStatus.resolved
        with pytest.raises(InvalidInput, match="cannot become"):
            repo.set_report_status(s, ids[3], "open")
    with session_scope(read_only=True) as s:
        actions = [e.action for e in audit.list_events(s, entity_type="error_report", entity_id=ids[0])]
    assert actions == ["report.ingest", "report.claim", "report.release"]


CLAIMER = textwrap.dedent("""
    import json, sys
    from registry import repo
    from registry.session import session_scope
    mine = []
    while True:
        with session_scope() as s:
            got = repo.claim_reports(s, sys.argv[1], limit=3, lease_seconds=600)
        if not got:
            break
        mine += [r.id for r in got]
    print(json.dumps(mine))
""")


def test_two_processes_never_claim_the_same_report(v1):
    ids = _seed(90)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, f"w{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    a, b = (json.loads(o) for o in outs)
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(ids)
    with session_scope(read_only=True) as s:
        assert repo.list_reports(s, status="open") == []
        assert audit.verify_chain(s).ok
