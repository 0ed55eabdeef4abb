"""The auditor's export holds every kind of record, as plain JSON."""

from __future__ import annotations

import json

from decision import error_reports
from registry import repo
from registry.export import export_all
from registry.session import head_revision, session_scope
from tests import dates
from tests.registry import factories as f


def test_export_has_the_full_history(db_url):
    with session_scope() as s:
        ds = repo.get_or_create_dataset(s, "val", "evaluation", "d" * 64, 10)
        v1 = f.version(s, evaluations={ds.id: f.eval_rows()})
        repo.set_alias(s, "cxr", "production", v1.id, reason="first")
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report())]).ids[0]
        d = repo.create_decision(s, [rid], "p" * 64, [{"treatment": "threshold_calibration", "p_success": 0.5}],
                                 "threshold_calibration", "only one")
        run = repo.start_run(s, d.id, "threshold_calibration", {}, v1.id)
        v2 = repo.derive_version(s, v1.id, thresholds={"Effusion": 0.2}, treatment_run_id=run.id)
        repo.finish_run(s, run.id, "accepted", v2.id, wall_seconds=0.1)
        sc = repo.upsert_schedule(s, "weekly", cron="0 6 * * 1", model="cxr", source="phantom:site-b",
                                  site="site-b")
        p = repo.start_pass(s, sc.id, dates.day(0, hours=6), "host:1", 0)
        repo.finish_pass(s, p.id, "succeeded", summary={"reports_created": 1})
    with session_scope(read_only=True) as s:
        data = export_all(s, url=db_url)
    text = json.dumps(data, allow_nan=False)  # plain JSON throughout
    assert json.loads(text)["format"] == "cxr-decide/export-1"
    assert [v["version"] for v in data["versions"]] == [1, 2]
    assert data["versions"][1]["treatment_run_id"] == run.id and data["versions"][0]["tensor_digests"]
    assert data["alias_history"][0]["reason"] == "first" and data["aliases"][0]["alias"] == "production"
    assert len(data["evaluations"]) == 3 and data["reports"][0]["id"] == rid
    assert data["decisions"][0]["candidates"][0]["treatment"] == "threshold_calibration"
    assert data["runs"][0]["outcome"] == "accepted" and data["blobs"][0]["path"].startswith("blobs/")
    assert data["audit_verification"]["ok"] and len(data["audit_events"]) >= 8
    assert data["schema_revision"] == head_revision()
    assert data["schedules"][0]["name"] == "weekly" and data["schedules"][0]["next_index"] == 1
    assert data["scheduled_passes"][0]["status"] == "succeeded"
    assert data["scheduled_passes"][0]["summary"] == {"reports_created": 1}
