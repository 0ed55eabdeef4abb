"""Monitoring without labels, end to end on the tiny registry: a site's unlabelled window is judged against
its version's reference; a shifted one files a distribution_shift report that the policy answers with a
request for labels (a person approves it; nothing is retrained); when the labels come, the window's
label-free estimates are set against them — and a site whose readers call a finding differently is told the
estimate cannot be trusted."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from cxr.sources import open_recorded
from decision.documents.registry_html import write_report
from decision.engine import Engine
from decision.jobs import feedback_source, monitor_pass, monitor_window, phantom_epoch
from policies import load_policy
from registry import repo
from registry.entities import DecisionStatus, ReportStatus
from registry.export import export_all
from registry.session import session_scope

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-home")]
runner = CliRunner()


def test_a_shifted_window_asks_for_labels_and_a_quiet_one_does_not(tiny_home):
    engine = Engine(tiny_home.url, tiny_home.home, load_policy())
    quiet = monitor_pass(engine, "cxr", "phantom:site-a", "site-a", index=0, per_window=200, unlabelled=True)
    assert not quiet.monitor.record.shifted and quiet.monitor.report_id is None
    assert min(t.p_adjusted for t in quiet.monitor.drift.tests) > 0.5  # far from the 0.05 line
    shifted = monitor_pass(engine, "cxr", "phantom:site-e", "site-e", index=0, per_window=200, unlabelled=True)
    u = shifted.monitor
    assert u.record.shifted and u.report_id is not None and u.record.report_id == u.report_id
    assert u.record.ood["share"] > 0.5 and u.record.tests["tested"]
    with session_scope(tiny_home.url, read_only=True) as s:
        report = repo.get_report(s, u.report_id)
        [decision] = [d for d in repo.list_decisions(s) if u.report_id in d.report_ids]
    assert (report.kind.value, report.metric, report.target) == ("distribution_shift", "shift_p", 0.05)
    assert report.value <= 0.05 and report.pathology == u.drift.worst.name
    assert [c["image_id"] for c in report.cases] == u.record.moved[:len(report.cases)] and len(report.cases) == 50
    # the policy's answer: a request for labels that waits for a person; no treatment ran, no version was made
    assert decision.status == DecisionStatus.awaiting_approval and decision.chosen == "request_labels"
    assert decision.evidence["label_request"]["studies"] == [c["image_id"] for c in report.cases]
    assert [d.runs for d in shifted.pass_summary.decisions] == [[]]
    # every estimate at site-e (its films are outside the reference) says it is not valid, and why
    assert all(not e.valid and "out of distribution" in (e.reason or "") for e in u.estimates)

    res = runner.invoke(app, ["labels", str(decision.id)])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert res.exit_code == 0 and [r["image_id"] for r in rows] == decision.evidence["label_request"]["studies"]
    assert rows[0]["rank"] == "1" and rows[0]["site"] == "site-e" and rows[0]["dataset"] == "feedback-site-e-week1"
    assert runner.invoke(app, ["labels", "999"]).exit_code == 2

    with session_scope(tiny_home.url) as s:
        repo.approve_decision(s, decision.id, reason="sent to the site's radiologists", actor="radiology-lead")
    resumed = engine.run_pass()
    [done] = [d for d in resumed.decisions if d.decision_id == decision.id]
    assert done.status == DecisionStatus.succeeded and "labels requested" in done.message and not done.runs
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.get_report(s, u.report_id).status == ReportStatus.resolved
        assert len(repo.list_versions(s)) == 1  # nothing was retrained on an unlabelled signal

    # a second shifted window while the site's report is open is not reported again
    again = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=0, per_window=200, unlabelled=True)
    assert again.monitor.record.shifted and again.monitor.report_id is not None  # site-b: its own report
    week2 = monitor_pass(engine, "cxr", "phantom:site-b", "site-b", index=1, per_window=200, unlabelled=True,
                         treat=False)
    assert week2.monitor.report_id is None and week2.monitor.still_open == again.monitor.report_id

    drift = runner.invoke(app, ["monitor", "drift", "site-b", "--json"])
    assert drift.exit_code == 0 and [w["report_id"] for w in json.loads(drift.stdout)] == [
        again.monitor.report_id, None]


def test_labels_for_the_window_check_its_estimate_and_contradict_it_under_concept_shift(tiny_home):
    engine = Engine(tiny_home.url, tiny_home.home, load_policy())
    u = monitor_pass(engine, "cxr", "phantom:site-a", "site-a", index=0, per_window=300, unlabelled=True,
                     treat=False).monitor
    valid = [e.pathology for e in u.estimates if e.valid]
    assert valid  # site-a looks like the calibration split: its estimates hold
    src, window = feedback_source("phantom:site-a", "site-a", 0, 300, 32,
                                  epoch=phantom_epoch("site-a", tiny_home.url))
    ds = open_recorded(src, cache_dir=tiny_home.home / "cache")
    agree = monitor_window(engine, "cxr", ds, src, "site-a", window)
    assert agree.realised is not None and agree.realised["contradicted"] == []
    assert set(agree.realised["pathologies"]) == set(valid)

    # readers who call the first valid finding the other way round: its labels flipped
    name = valid[0]
    j = ds.label_names.index(name)
    flipped = ds.labels.copy()
    flipped[:, j] = np.where(np.isnan(flipped[:, j]), np.nan, 1 - flipped[:, j])
    other = replace(ds, labels=flipped, name=ds.name + "-relabelled")
    told = monitor_window(engine, "cxr", other, {**src, "relabelled": name}, "site-a", window)
    assert name in told.realised["contradicted"] and "cannot be trusted" in told.realised["summary"]
    with session_scope(tiny_home.url, read_only=True) as s:
        [rec] = repo.list_windows(s, site="site-a")
        export = export_all(s)
    assert rec.realised["contradicted"] == told.realised["contradicted"]
    # the registry's HTML report shows the drift evidence and each estimate against what was realised
    page = write_report(export, tiny_home.home / "report.html").read_text()
    section = page[page.index("<h2>Monitoring without labels</h2>"):page.index("<h2>Lineage</h2>")]
    assert "data:image/png;base64," in section and "contradicted" in section and name in section


def test_a_folder_of_unlabelled_films_dicom_included_is_judged_and_a_ct_is_counted_outside(tiny_home, tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    from cxr.errors import InvalidInput
    from cxr.images import write_folder

    ds = open_recorded({"kind": "phantom", "site": "site-a", "split": "feedback", "n": 60, "resolution": 32,
                        "seed": 0, "missing_sign_rate": 0.1}, cache_dir=tiny_home.home / "cache")
    labels = write_folder(ds, tmp_path / "window")
    films = labels.parent / "images"
    labels.unlink()  # films without labels
    shutil.copy(get_testdata_file("CT_small.dcm"), films / "ct.dcm")
    engine = Engine(tiny_home.url, tiny_home.home, load_policy())
    with pytest.raises(InvalidInput, match="--unlabelled"):
        monitor_pass(engine, "cxr", f"films:{films}", "site-a", treat=False)
    u = monitor_pass(engine, "cxr", f"films:{films}", "site-a", unlabelled=True, treat=False).monitor
    assert u.record.n_studies == 61 and u.record.ood["flags"].get("not_radiograph") == 1
    names = sorted(p.name for p in films.iterdir())  # the order the folder is read in
    ct = u.ood[names.index("ct.dcm")]
    assert ct.outside and "Modality CT" in " ".join(ct.reasons)
    with session_scope(tiny_home.url, read_only=True) as s:
        assert [d.role.value for d in repo.list_datasets(s, site="site-a") if d.name.startswith("films-")] == [
            "unlabelled"]
