"""Version references and unlabelled windows in the registry: one reference per version (the first
committed stands), windows recorded, found, linked to their report and given their realised figures —
every write audited, everything exported."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cxr.errors import InvalidInput, NotFound
from decision import error_reports
from registry import audit, blobs, repo
from registry.export import export_all
from registry.session import session_scope
from tests import dates
from tests.registry import factories as f


def test_a_version_has_one_reference_and_the_first_one_stands(db_url):
    with session_scope() as s:
        v = f.version(s)
        assert repo.get_reference(s, v.id) is None
        first, second = blobs.put_bytes(b"reference-1"), blobs.put_bytes(b"reference-2")
        for ref in (first, second):
            repo.record_blob(s, ref)
        got = repo.add_reference(s, v.id, first.digest, {"n": 2000, "features": 256})
        again = repo.add_reference(s, v.id, second.digest, {"n": 1})  # a second worker: its blob is an orphan
    assert got.digest == again.digest == first.digest and again.summary == {"n": 2000, "features": 256}
    with session_scope(read_only=True) as s:
        events = [e for e in audit.list_events(s) if e.action == "reference.create"]
        assert [e.entity_id for e in events] == [str(v.id)] and events[0].new["digest"] == first.digest
        with pytest.raises(NotFound):
            repo.add_reference(s, 999, first.digest, {})


def test_windows_are_recorded_found_linked_and_given_their_realised_figures(db_url):
    start, end = dates.week(1)
    with session_scope() as s:
        v = f.version(s)
        w = repo.record_window(s, version_id=v.id, site="site-b", window_start=start, window_end=end, n_studies=200,
                               shifted=True, alpha=0.05, tests={"summary": "Effusion p 0.001", "worst": "Effusion"},
                               estimates={"Effusion": {"recall": 0.7}}, ood={"share": 0.1}, moved=["img-3", "img-1"])
        other = repo.record_window(s, version_id=v.id, site="site-a", window_start=start, window_end=end,
                                   n_studies=50, shifted=False, alpha=0.05, tests={}, estimates={}, ood={})
        with pytest.raises(InvalidInput):
            repo.record_window(s, version_id=v.id, site="site-a", window_start=end, window_end=start, n_studies=1,
                               shifted=False, alpha=0.05, tests={}, estimates={}, ood={})
    with session_scope() as s:
        assert repo.find_window(s, "site-b", start, end).id == w.id
        assert repo.find_window(s, "site-b", start, end + timedelta(days=1)) is None
        assert [x.id for x in repo.list_windows(s)] == [w.id, other.id]
        assert [x.id for x in repo.list_windows(s, site="site-a")] == [other.id]
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report(site="site-b"))]).ids[0]
        linked = repo.link_window_report(s, w.id, rid)
        done = repo.set_window_realised(s, w.id, {"Effusion": {"realised_recall": 0.66, "contradicted": False}})
        with pytest.raises(NotFound):
            repo.set_window_realised(s, 999, {})
    assert linked.report_id == rid and done.realised["Effusion"]["realised_recall"] == 0.66
    assert (done.moved, done.shifted, done.tests["worst"]) == (["img-3", "img-1"], True, "Effusion")
    with session_scope(read_only=True) as s:
        actions = [e.action for e in audit.list_events(s, entity_type="unlabelled_window")]
        exported = export_all(s)
        assert audit.verify_all(s).ok
    assert actions == ["window.record", "window.record", "window.report", "window.realised"]
    assert [x["site"] for x in exported["unlabelled_windows"]] == ["site-b", "site-a"]
    assert exported["unlabelled_windows"][0]["realised"]["Effusion"]["contradicted"] is False
    assert exported["references"] == []
