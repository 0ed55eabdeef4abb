"""End to end: baseline at site-a, site-b feedback, Cardiomegaly false positives fixed by escalation.

One run of the demo's job (about three minutes on two cores) backs every test here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from decision.demo import DemoConfig, run_demo
from policies import load_policy
from registry.session import dispose_engines
from tests.e2e.ladder_checks import assert_calibration_tried_or_skipped_as_infeasible

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]


def _cardiomegaly_decisions(export):
    reports = {r["id"]: r for r in export["reports"]}
    return [d for d in export["decisions"]
            if reports[d["report_ids"][0]]["pathology"] == "Cardiomegaly"
            and reports[d["report_ids"][0]]["kind"] == "false_positives"
            and reports[d["report_ids"][0]]["site"] == "site-b"]


def test_cardiomegaly_false_positives_at_site_b_are_reported_and_fixed_by_the_cheapest_treatment_that_passes(demo):
    exp = demo.export
    decisions = _cardiomegaly_decisions(exp)
    assert decisions, "the monitor did not report the AP-film Cardiomegaly false positives"
    d = decisions[0]
    applicable = [c["treatment"] for c in d["candidates"] if c["applicable"]]
    # the plan ranks the cheapest likely fix first — unless no operating point can meet the target, which the
    # rationale says with its numbers (the baseline's training is not bit-identical across CPUs and threads)
    tried = assert_calibration_tried_or_skipped_as_infeasible(applicable, d["rationale"])
    runs = [r for r in exp["runs"] if r["decision_id"] == d["id"]]
    assert runs[0]["treatment"] == tried[0] == applicable[0]
    versions = {v["id"]: v for v in exp["versions"]}
    if runs[0]["treatment"] == "threshold_calibration" and runs[0]["outcome"] == "accepted":
        # Per-site operating points: site-b's own Cardiomegaly threshold meets the target (the baseline's
        # scores rank site-b's films well enough), and every other site keeps the parent's threshold.
        v = versions[runs[0]["output_version_id"]]
        parent = versions[v["parent_id"]]
        assert v["site_thresholds"]["site-b"]["Cardiomegaly"] != parent["thresholds"]["Cardiomegaly"]
        assert v["thresholds"]["Cardiomegaly"] == parent["thresholds"]["Cardiomegaly"]
    else:  # no site-b threshold keeps the guaranteed recall and meets the target: the ladder escalates (a
        # candidate held only for underpowered checks is approved by the person the demo plays, and says so)
        assert runs[-1]["outcome"] == "accepted" and runs[-1]["treatment"] in ("surgical_correction", "head_retrain")
        assert all("played by `decide demo`" in a["reason"] for a in d["approvals"])
    assert d["status"] == "succeeded"
    acc = demo.acceptance
    assert acc["cardiomegaly_fpr_at_or_under_target"], acc
    assert acc["others_within_margin"], acc
    site_b = next(v for v in acc["datasets"].values() if v["site"] == "site-b")
    assert site_b["cardiomegaly_fpr_baseline"] > 2 * site_b["cardiomegaly_fpr"]


def test_every_step_is_recorded_and_the_audit_chain_verifies(demo):
    exp = demo.export
    assert exp["audit_verification"]["ok"]
    runs = {r["id"]: r for r in exp["runs"]}
    for v in exp["versions"]:
        if v["parent_id"] is None:
            continue
        run = runs[v["treatment_run_id"]]  # every derived version points at the run that made it
        assert run["output_version_id"] == v["id"] and run["outcome"] in ("accepted", "rejected")
        assert any(e["version_id"] == v["id"] for e in exp["evaluations"])
    assert all(r["outcome"] != "running" for r in exp["runs"])
    # A real subprocess: the auditor's command on the demo home.
    env = {**os.environ, "DECIDE_HOME": str(demo.home)}
    out = subprocess.run([sys.executable, "-m", "cli", "audit", "verify"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_report_html_shows_its_plots_in_headless_chromium(demo, tmp_path):
    from tests.decision.test_report_html import chromium_image_check

    assert demo.report_path is not None and demo.report_path.is_file()
    text = demo.report_path.read_text()
    assert 'id="k-sweep"' in text and 'id="lineage"' in text and 'id="auroc-0"' in text
    assert 'id="cases-0"' in text  # Grad-CAM of the Cardiomegaly report's worst false positives
    ok, total, widths = chromium_image_check(demo.report_path, tmp_path)
    assert total >= 4 and ok == total and all(w > 0 for w in widths)


def test_every_promoted_version_has_a_schema_valid_change_record_and_the_report_its_forests(demo):
    from decision.documents.change_record import change_records, promoted_version_ids
    from tests.decision.test_change_record import validator

    records, check = change_records(demo.export), validator()
    assert len(records) == len(promoted_version_ids(demo.export)) >= 2
    assert not [(r["version"]["ref"], e.message) for r in records for e in check.iter_errors(r)]
    assert 'id="forest-0"' in demo.report_path.read_text()  # loaded: test_the_report_html_shows_its_plots…


def test_a_second_run_reuses_everything_and_decides_nothing(demo, demo_copy):
    url = f"sqlite:///{demo_copy / 'registry.db'}"
    again = run_demo(demo_copy, url, load_policy(), DemoConfig())
    dispose_engines()
    assert not again.trained_now and again.weeks == []
    assert again.production_ref == demo.production_ref
    for table in ("versions", "reports", "decisions", "runs"):
        assert len(again.export[table]) == len(demo.export[table])


def test_no_site_b_calibration_is_rejected_for_site_a_and_site_a_keeps_its_operating_points(demo):
    """Issue 9: a site-b report's calibration is a site-b override — it is never rejected for another site's
    sake, and every accepted one leaves site-a's thresholds exactly as its parent had them."""
    from registry import repo
    from registry.session import session_scope

    with session_scope(f"sqlite:///{demo.home / 'registry.db'}", read_only=True) as s:
        site_b = {r.id for r in repo.list_reports(s) if r.site == "site-b"}
        decisions = {d.id for d in repo.list_decisions(s) if set(d.report_ids) & site_b}
        runs = [r for r in repo.list_runs(s, treatment="threshold_calibration") if r.decision_id in decisions]
        assert runs, "the demo ran no threshold calibration"
        for r in runs:
            checks = ((r.metrics or {}).get("gate") or {}).get("checks", [])
            elsewhere = [c["name"] for c in checks
                         if not c["passed"] and c.get("binding", True) and "site-b" not in c["name"]]
            assert not elsewhere, f"run {r.id} failed at another site: {elsewhere}"
            if r.outcome.value == "accepted":
                new, parent = repo.get_version(s, r.output_version_id), repo.get_version(s, r.input_version_id)
                assert new.thresholds_for("site-a") == parent.thresholds_for("site-a"), r.id
                assert new.thresholds_for("site-b") != parent.thresholds_for("site-b"), r.id


def test_the_new_sites_input_level_shift_is_fixed_by_re_training_the_first_block(demo):
    """Issue 9: site-e's washed-out films (gamma-0.4 look-up table) make the baseline call Cardiomegaly on
    nearly every normal heart there. Threshold calibration and a head retrain cannot meet the target; F
    re-optimization, told by the shift diagnosis that the shift is input-level, re-trains the stem and the
    first dense block, passes the gate at site-e (every other pathology there non-inferior or underpowered
    with no significant harm) and serves site-e alone. Graded here with plain numpy, not the gate's code."""
    from decision.catalog import Catalog
    from registry import repo
    from registry.entities import DatasetRole
    from registry.session import session_scope

    new = demo.new_site
    assert new is not None and new.job is not None and not new.skipped, new
    fix = new.early_block_fix
    assert fix is not None, (new.job.pass_summary.decisions, new.settled)
    assert fix["block"] == 1 and fix["level"] == "input" and fix["serving"] == "production@site-e", fix
    assert "input-level" in fix["reason"] and fix["site_style"]["gamma"] < 0.7, fix  # the washed-out curve, estimated
    url = f"sqlite:///{demo.home / 'registry.db'}"
    with session_scope(url, read_only=True) as s:
        reports = [r for r in repo.list_reports(s) if r.site == "site-e"]
        assert [(r.pathology, r.kind.value) for r in reports] == [("Cardiomegaly", "false_positives")]  # the watch
        d = next(d for d in repo.list_decisions(s) if reports[0].id in d.report_ids)
        runs = repo.list_runs(s, decision_id=d.id)
        serving = {site: repo.resolve_version(s, "cxr@production", site=site) for site in ("site-a", "site-e")}
        baseline = repo.get_version(s, next(v.id for v in repo.list_versions(s, "cxr") if v.parent_id is None))
        ev_e = next(x for x in repo.list_datasets(s, role=DatasetRole.evaluation) if x.source.get("site") == "site-e")
    order = [r.treatment for r in runs]
    tried = assert_calibration_tried_or_skipped_as_infeasible(order, d.rationale)
    for r in runs:
        if r.treatment in tried:  # head-level: the target stays out of reach
            failed = [c["name"] for c in r.metrics["gate"]["checks"] if not c["passed"] and c.get("binding", True)]
            assert r.outcome.value == "rejected" and "target_fixed@phantom-site-e-evaluation" in failed, failed
    freopt = next(r for r in runs if r.treatment == "f_reoptimization")
    assert freopt.outcome.value == "accepted" and freopt.id == fix["run_id"]
    for c in freopt.metrics["gate"]["checks"]:
        if c["name"].endswith("@phantom-site-e-evaluation") and c["name"].startswith("noninferiority["):
            assert c["passed"] and c["flag"] in (None, "", "underpowered", "unchanged"), c
    assert serving["site-e"].id == freopt.output_version_id != serving["site-a"].id  # site-e alone
    # Independently: Cardiomegaly FPR on site-e's held-out evaluation films, baseline vs now, at site-e's points.
    cat = Catalog(demo.home)
    ds = cat.dataset(ev_e)
    names = list(cat.weights(baseline).spec.pathologies)
    j = names.index("Cardiomegaly")
    y = ds.aligned_labels(names)[:, j]

    def fpr(v):
        p = cat.probabilities(cat.weights(v), ev_e)[:, j]
        called = p >= v.thresholds_for("site-e")["Cardiomegaly"]
        return float((called & (y == 0)).sum() / (y == 0).sum()), float((called & (y == 1)).sum() / (y == 1).sum())

    (before, _), (after, recall) = fpr(baseline), fpr(serving["site-e"])
    assert before > 0.5 and after <= 0.2 and recall >= 0.8, (before, after, recall)


def test_site_b_shift_is_reported_before_its_first_label_and_its_label_request_lists_studies(demo):
    """Issue 19: site-b's first week arrives without labels; the label-free monitor files a distribution_shift
    report before any label, the policy asks for labels (the demo plays the person who sends the studies),
    and the labelled week 1 that follows is set against the window's label-free estimates."""
    exp = demo.export
    [shift] = [r for r in exp["reports"] if r["kind"] == "distribution_shift" and r["site"] == "site-b"]
    labelled = [d["created_at"] for d in exp["datasets"]
                if d["role"] == "feedback" and d["source"].get("site") == "site-b"]
    assert labelled and shift["created_at"] < min(labelled)  # before the first label
    assert shift["metric"] == "shift_p" and shift["value"] <= shift["target"] and len(shift["cases"]) == 50
    decision = next(d for d in exp["decisions"] if shift["id"] in d["report_ids"])
    assert decision["chosen"] == "request_labels" and decision["status"] == "succeeded"
    assert decision["evidence"]["label_request"]["studies"] == [c["image_id"] for c in shift["cases"]]
    assert any(a["actor"] == "radiology-lead" and "played by `decide demo`" in a["reason"]
               for a in decision["approvals"])
    [window] = [w for w in exp["unlabelled_windows"] if w["report_id"] == shift["id"]]
    assert window["shifted"] and window["moved"][:50] == decision["evidence"]["label_request"]["studies"]
    assert window["realised"]["summary"]  # week 1's labels were set against the estimates made without them
    assert not any(r["treatment"] != "request_labels" and r["decision_id"] == decision["id"] for r in exp["runs"])


def test_site_b_reports_that_share_its_shift_get_one_site_decision_and_one_candidate_per_rung(demo):
    """Issue 20: site-b's false-positive reports that no operating point or head fixes are one site decision;
    the demo plays the person who approves its augmentation retrain, which is trained once for all of them,
    and the summary says which reports it resolved, which are open, and the best FPR any threshold reaches
    within the gate's bounds for the parent and every candidate."""
    group = demo.site_group
    assert group is not None and not group.skipped, group and group.skipped
    exp = demo.export
    [decision] = [d for d in exp["decisions"] if d["id"] == group.decision_id]
    assert len(decision["report_ids"]) >= 2 and decision["report_ids"] == group.report_ids
    reports = {r["id"]: r for r in exp["reports"]}
    assert {reports[i]["site"] for i in group.report_ids} == {"site-b"}
    runs = [r for r in exp["runs"] if r["decision_id"] == decision["id"]]
    per_rung = {}
    for r in runs:
        per_rung[r["treatment"]] = per_rung.get(r["treatment"], 0) + 1
    assert per_rung.get("augmentation_retrain") == 1, per_rung  # trained once, for every grouped report
    assert all(n == 1 for n in per_rung.values()), per_rung
    assert any(a["actor"] == "radiology-lead" and "played by `decide demo`" in a["reason"]
               for a in decision["approvals"])
    # every grouped report is said to be resolved or still open, and that matches the registry
    said = {int(x.split()[1]): x for x in group.resolved + group.still_open}
    assert set(said) == set(group.report_ids)
    for rid in group.report_ids:
        assert (reports[rid]["status"] == "resolved") == (said[rid] in group.resolved)
    # the numbers behind it: one row per grouped false-positive report, parent and every candidate
    assert {row["report_id"] for row in group.reach} == {i for i in group.report_ids
                                                         if reports[i]["kind"] == "false_positives"}
    for row in group.reach:
        assert len(row["best_fpr"]) == 1 + sum(1 for r in runs if r["output_version_id"])
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["best_fpr"].values())


def test_the_monitor_files_subgroup_reports_at_site_b_and_the_gate_judges_their_fix_on_the_subgroup(demo):
    """Issue 21: in site-b's labelled weeks the monitor files a report for a group of films whose FPR (or
    recall) breaches its SLO where no whole-site report of that pathology and kind is filed for the window
    (in the demo: Infiltration FPR 0.66 on AP films, the site as a whole 0.50); `decide reports` lists it
    with its subgroup, and every candidate's target check is judged on that subgroup's own cases."""
    exp, policy = demo.export, load_policy()
    subgroup_reports = [r for r in exp["reports"] if r.get("subgroup")]
    assert subgroup_reports, "the monitor filed no subgroup report in the demo's phantom scenario"
    whole_site = {(r["site"], r["pathology"], r["kind"], r["window_start"]) for r in exp["reports"]
                  if not r.get("subgroup")}
    for r in subgroup_reports:
        assert (r["site"], r["pathology"], r["kind"], r["window_start"]) not in whole_site  # no flood
        slo, c = policy.slos.for_pathology(r["pathology"]), r["counts"]
        if r["kind"] == "false_positives":  # the breach, and the value is its own counts' FPR
            assert r["target"] == slo.max_fpr < r["value"] == pytest.approx(c["fp"] / (c["fp"] + c["tn"]))
        else:
            assert r["kind"] == "false_negatives"
            assert r["target"] == slo.min_recall > r["value"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
        assert "the site as a whole" in r["notes"]
        [decision] = [d for d in exp["decisions"] if d["report_ids"] == [r["id"]]]  # its own (not a site group)
        judged = [c for run in exp["runs"] if run["decision_id"] == decision["id"]
                  for c in ((run.get("metrics") or {}).get("gate") or {}).get("checks", [])
                  if c["name"].startswith("target_fixed")]
        assert judged and all(f"({r['subgroup']})" in c["detail"] for c in judged), judged
    env = {**os.environ, "DECIDE_HOME": str(demo.home)}
    out = subprocess.run([sys.executable, "-m", "cli", "reports", "--site", "site-b", "--subgroups", "--json"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = {r["id"]: r["subgroup"] for r in json.loads(out.stdout)}
    assert listed == {r["id"]: r["subgroup"] for r in subgroup_reports if r["site"] == "site-b"} != {}
