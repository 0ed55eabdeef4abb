"""Feasibility before climbing on a real registry: the planning evidence reads the serving version's scores on
the site's labelled feedback and skips threshold calibration exactly when a brute force over those scores
(computed here through another path: the catalog's per-data-set probabilities) finds no admissible
operating point meeting the target; the numbers are recorded with the decision's evidence."""

from __future__ import annotations

import numpy as np
import pytest

from decision import evidence
from decision.catalog import Catalog
from decision.error_reports import ingest, parse_report
from decision.feasibility import Bounds
from decision.planner import plan
from policies import load_policy, parse_policy
from registry import repo
from registry.session import session_scope
from tests import dates
from tests.decision.test_feasibility import _brute_force
from treatments.calibration import ThresholdCalibration

pytestmark = pytest.mark.xdist_group("tiny-home")
FLOOR, FRACTION = 0.5, 0.5


def _policy():
    raw = load_policy().model_dump(mode="json")
    raw["gate"].update(recall_floor=FLOOR, max_tp_loss_fraction=FRACTION, max_tp_loss=None)
    return parse_policy(raw)


def _site_b_scores(home):
    """(pathology, labels, parent scores, parent threshold) at site-b's feedback: the pathology with most positives."""
    cat = Catalog(home.home)
    with session_scope(home.url, read_only=True) as s:
        parent = repo.resolve_version(s, "cxr@production", site="site-b")
        (fb,) = repo.list_datasets(s, role="feedback", site="site-b")
    w = cat.weights(parent)
    names = list(w.spec.pathologies)
    labels, probs = cat.dataset(fb).aligned_labels(names), cat.probabilities(w, fb)
    thresholds = parent.thresholds_for("site-b")
    best = max((p for p in names if thresholds.get(p) is not None),
               key=lambda p: np.nansum(labels[:, names.index(p)] == 1))
    j = names.index(best)
    known = ~np.isnan(labels[:, j])
    return best, labels[known, j].astype(int), probs[known, j], float(thresholds[best])


def _report(url, pathology, target, day):
    rep = {"model": "cxr", "version": 1, "pathology": pathology, "kind": "false_positives", "metric": "fpr",
           "value": 1.0, "target": target, "site": "site-b", "window_start": dates.day(day),
           "window_end": dates.day(day + 1), "counts": {"tp": 5, "fp": 100, "tn": 0, "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def test_calibration_is_skipped_exactly_when_no_operating_point_reaches_the_target(tiny_home):
    pathology, y, s, t0 = _site_b_scores(tiny_home)
    assert y.sum() >= 10 and (y == 0).sum() >= 30
    best = _brute_force(y, s, t0, "fpr", Bounds(FLOOR, None, FRACTION))
    assert best is not None and 0.03 < best < 0.97
    policy, cat = _policy(), Catalog(tiny_home.home)
    plugins = {"threshold_calibration": ThresholdCalibration()}
    for target, day in ((best - 0.02, 1), (best + 0.02, 3)):  # just out of reach, just within it
        rid = _report(tiny_home.url, pathology, round(target, 4), day)
        with session_scope(tiny_home.url, read_only=True) as sess:
            report = repo.get_report(sess, rid)
            parent = evidence.serving_version(sess, report)
            infos = evidence.treatment_infos(sess, plugins, policy, report, parent, catalog=cat)
        (cal,) = infos
        found = cal.evidence["calibration_feasibility"]
        assert found["best"] == pytest.approx(best) and found["n_pos"] == int(y.sum())
        assert found["parent_threshold"] == pytest.approx(t0) and found["version"] == parent.ref
        unreachable = bool(target < best)
        assert found["feasible"] is not unreachable and found["skipped"] is unreachable
        p = plan(evidence.report_view(report), infos, policy, [])
        record, _ = evidence.for_plan(cat, parent, report, None, "", p.chosen is not None, infos)
        assert record["calibration_feasibility"]["threshold_calibration"] == found
        if unreachable:
            assert p.chosen is None and cal.skipped.startswith(
                f"no operating point of {parent.ref}'s scores at site-b meets FPR ≤ {target:.2f} within the TP-loss "
                f"bound: best FPR at recall ≥ {FLOOR:.2f} (≤ {FRACTION:.0%} of true positives lost) is {best:.2f}")
            assert "Skipped on the evidence: threshold_calibration: no operating point" in p.rationale
        else:
            assert p.chosen.treatment == "threshold_calibration" and not cal.skipped


def test_without_a_catalog_or_with_the_policy_off_nothing_is_skipped(tiny_home):
    pathology = _site_b_scores(tiny_home)[0]
    rid = _report(tiny_home.url, pathology, 0.01, 1)
    raw = _policy().model_dump(mode="json")
    raw["calibration"]["skip_infeasible"] = False
    off = parse_policy(raw)
    plugins = {"threshold_calibration": ThresholdCalibration()}
    with session_scope(tiny_home.url, read_only=True) as sess:
        report = repo.get_report(sess, rid)
        parent = evidence.serving_version(sess, report)
        (bare,) = evidence.treatment_infos(sess, plugins, _policy(), report, parent)
        (kept,) = evidence.treatment_infos(sess, plugins, off, report, parent, catalog=Catalog(tiny_home.home))
    assert bare.applicable and not bare.skipped and bare.evidence == {}
    assert not kept.skipped and kept.evidence["calibration_feasibility"]["feasible"] is False
    assert kept.evidence["calibration_feasibility"]["skipped"] is False
