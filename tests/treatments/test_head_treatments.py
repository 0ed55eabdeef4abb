"""Calibration, surgery and head retrain on a synthetic site shift."""

from dataclasses import replace

import numpy as np
import pytest

from tests.treatments.conftest import CARDIO
from treatments.base import TreatmentDeclined, probabilities
from treatments.calibration import ThresholdCalibration
from treatments.head_retrain import HeadRetrain, fit_head, match_recall
from treatments.surgery import SurgicalCorrection


def _site_fpr(ctx, w, b, t):
    cal = ctx.calibration.for_site("site-b")
    y = cal.labels[:, CARDIO]
    p = probabilities(cal.features, w, b)[:, CARDIO]
    return float(((p >= t) & (y == 0)).sum() / (y == 0).sum())


def test_calibration_moves_only_the_target_threshold(world):
    res = ThresholdCalibration().apply(world)
    assert res.head_weight is None and res.trainable_parameters == 0
    changed = {k for k in world.thresholds if res.thresholds[k] != world.thresholds[k]}
    assert changed == {"Cardiomegaly"}
    assert res.thresholds["Cardiomegaly"] > world.thresholds["Cardiomegaly"]
    methods = [r["method"] for r in res.artifacts["tradeoff"]]
    assert methods == ["current", "chosen", "youden", "f1"]
    assert "guarantee" in res.notes


def test_surgery_declines_when_every_cut_loses_true_positives(world):
    # In this world the site's true positives lean on the flawed channel too.
    with pytest.raises(TreatmentDeclined, match="loses true positives") as exc:
        SurgicalCorrection().apply(world)
    sweep = exc.value.artifacts["k_sweep"]
    assert sweep and sweep[0]["channels"][0] == 15 and sweep[0]["tp_loss"] > 0


def test_surgery_changes_one_row_only(world):
    # Noise-free Cardiomegaly labels, carried by their own channel: a clean cut exists.
    cal = world.calibration
    labels = cal.labels.copy()
    labels[:, CARDIO] = (cal.features[:, CARDIO] > 1.3).astype(np.float32)
    w = world.head_weight.copy()
    w[CARDIO, CARDIO] = 10.0
    world = replace(world, head_weight=w, calibration=replace(cal, labels=labels))
    res = SurgicalCorrection().apply(world)
    w2 = res.head_weight
    diff_rows = np.flatnonzero((w2 != world.head_weight).any(axis=1))
    assert diff_rows.tolist() == [CARDIO]
    # The channel carrying the site shift is the first one cut.
    assert res.artifacts["k_sweep"][0]["channels"][0] == 15
    assert res.trainable_parameters == res.artifacts["chosen_k"]
    # Every other output is bit-identical.
    before = probabilities(world.calibration.features, world.head_weight, world.head_bias)
    after = probabilities(world.calibration.features, w2, world.head_bias)
    others = [k for k in range(18) if k != CARDIO]
    assert np.array_equal(before[:, others], after[:, others])
    assert _site_fpr(world, w2, world.head_bias, 0.5) < _site_fpr(world, world.head_weight, world.head_bias, 0.5)
    assert all(row["tp_loss"] >= 0 for row in res.artifacts["k_sweep"])


def test_surgery_needs_false_positive_evidence(world):
    from treatments.base import PlanningContext

    bare = replace(world.report, cases=())
    ok, why = SurgicalCorrection().applicable(bare, PlanningContext(world.spec, world.thresholds, {}, 1000))
    assert not ok and "case-level" in why


def test_head_retrain_fixes_the_site_shift(world):
    res = HeadRetrain().apply(world)
    assert res.trainable_parameters == 16 + 1  # the failing row only, by default
    others = [k for k in range(18) if k != CARDIO]
    assert np.array_equal(res.head_weight[others], world.head_weight[others])
    assert all(res.thresholds[p] == world.thresholds[p] for p in world.thresholds if p != "Cardiomegaly")
    t = res.thresholds["Cardiomegaly"]
    assert _site_fpr(world, res.head_weight, res.head_bias, t) <= 0.1
    # The learned head no longer reads AP-ness as Cardiomegaly.
    assert abs(res.head_weight[CARDIO, 15]) < 0.5 * world.head_weight[CARDIO, 15]
    assert res.artifacts["fit"]["loss_after"] < res.artifacts["fit"]["loss_before"]


def test_head_retrain_can_refit_every_row(world):
    res = HeadRetrain().apply(replace(world, params={"rows": "all"}))
    assert res.trainable_parameters == 18 * 16 + 18
    assert _site_fpr(world, res.head_weight, res.head_bias, res.thresholds["Cardiomegaly"]) <= 0.1


def test_fit_head_beats_its_start_and_ignores_unknown_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.float32)
    y[::2, 2] = np.nan
    w0, b0 = np.zeros((3, 8), np.float32), np.zeros(3, np.float32)
    w, b, info = fit_head(x, y, w0, b0, np.ones_like(y), l2=1e-3)
    assert info["loss_after"] < info["loss_before"]
    acc = ((x @ w.T + b > 0) == (y > 0.5))[~np.isnan(y)].mean()
    assert acc > 0.95


def test_match_recall_keeps_the_number_of_detected_positives():
    y = np.array([1, 1, 1, 1, 0, 0])
    old = np.array([0.9, 0.8, 0.4, 0.2, 0.5, 0.1])
    new = old[::-1].copy()
    t = match_recall(y, old, new, 0.5)
    assert int((new[y == 1] >= t).sum()) == int((old[y == 1] >= 0.5).sum())
