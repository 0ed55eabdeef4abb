"""Backbone treatments that stop when they cannot win: the policy's time budget (on an injected clock, each
epoch "taking" 100 s) and early stopping on the target's held-out AUROC, recorded on the result; a tiny world
(32-pixel phantom films, a `tiny` DenseNet)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import cxr.train
from cxr.blocks import Consistency, block_inputs, tune_block
from cxr.data import phantom_dataset
from cxr.features import extract_features
from cxr.phantom import PhantomConfig
from cxr.spec import XRV_PATHOLOGIES, preset
from cxr.train import EarlyStopping, EpochWatch, TrainConfig, train
from tests.ticking import Ticking
from treatments.base import Case, FeatureSplit, ReportInfo, Slo, TreatmentContext
from treatments.freopt import FReoptimization, FReoptParams
from treatments.retrain import FullRetrain, RetrainParams


@pytest.fixture(scope="module")
def world():
    spec = preset("tiny")
    tr = phantom_dataset(PhantomConfig(site="site-a", n=240, resolution=32), workers=1)
    fb = phantom_dataset(PhantomConfig(site="site-b", split="feedback", n=400, resolution=32), workers=1)
    model = train(spec, tr, TrainConfig(epochs=1, batch_size=32, threads=1)).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    split = FeatureSplit("calibration", extract_features(model, fb), fb.aligned_labels(spec.pathologies),
                         fb.image_ids, fb.sites)
    report = ReportInfo(1, "Effusion", "false_negatives", "recall", 0.3, 0.6, "site-b", (Case(fb.image_ids[0], .1, 1),))
    ctx = TreatmentContext(
        report=report, spec=spec, head_weight=model.classifier.weight.detach().numpy().copy(),
        head_bias=model.classifier.bias.detach().numpy().copy(), thresholds={p: 0.2 for p in XRV_PATHOLOGIES[:14]},
        train=None, calibration=split, slo=Slo(0.6, 0.5, 0.6), params={}, delta=0.2,
        load_state=lambda: {k: v.clone() for k, v in state.items()}, image_data={"train": tr, "calibration": fb},
    )
    return ctx, model, tr


def freopt(ctx, **params):
    base = {"block": 4, "tune": "block+head", "second_block": False, "consistency": "off"}
    return FReoptimization().apply(replace(ctx, params={**base, **params}))


def test_the_stopping_settings_are_off_unless_the_policy_sets_them():
    for p in (FReoptParams(), RetrainParams()):
        assert p.time_budget_s is None and p.early_stop_patience is None and p.early_stop_min_delta == 0


def test_f_reoptimization_past_its_budget_stops_and_still_proposes_a_candidate(world, monkeypatch):
    ctx, _, _ = world
    monkeypatch.setattr(cxr.train, "budget_clock", Ticking(100))
    res = freopt(ctx, epochs=6, time_budget_s=250, second_block=True)
    t = res.artifacts["training"]
    assert (t["epochs_run"], t["epochs_planned"], t["stopped"]) == (3, 6, "budget")
    assert t["reason"] == "budget: 250 s reached after 3 of 6 epochs" and len(res.artifacts["losses"]) == 3
    assert "stopped after 3 of 6 epochs — budget: 250 s reached after 3 of 6 epochs" in res.notes
    # a candidate all the same: the tuned tensors and thresholds, for the gate to judge
    assert res.state_updates and res.thresholds["Effusion"] is not None
    if not res.artifacts["checks"]["4"]["fixed"]:  # the second block would be next, but the budget is spent
        assert res.artifacts["blocks_tried"] == [4] and "denseblock3 not tried: the 250 s budget is spent" in res.notes


def test_the_budget_also_stops_the_consistency_epochs(world, monkeypatch):
    ctx, _, _ = world
    monkeypatch.setattr(cxr.train, "budget_clock", Ticking(100))
    res = freopt(ctx, block=1, consistency="on", consistency_epochs=3, consistency_films=64, epochs=2,
                 time_budget_s=150)
    t = res.artifacts["training"]
    assert (t["epochs_run"], t["epochs_planned"], t["stopped"]) == (2, 5, "budget")  # 2 of 3 consistency epochs
    assert len(res.artifacts["losses"]) == 2 and res.state_updates


def test_f_reoptimization_keeps_the_epoch_with_the_best_held_out_target(world):
    ctx, _, _ = world
    res = freopt(ctx, epochs=6, early_stop_patience=2, early_stop_min_delta=0.01, lr=0.1)  # a rate that overshoots
    t = res.artifacts["training"]
    values = [m["value"] for m in t["monitored"]]
    assert t["monitor"].startswith("held-out Effusion AUROC at site-b") and t["patience"] == 2
    # the rule, replayed on the values it monitored (which epoch wins depends on float rounding, which
    # differs with the thread count): the best epoch moves only on a gain above min_delta, and it stops
    # `patience` epochs after the best
    best = 1
    for epoch, v in enumerate(values[1:], start=2):
        if v > values[best - 1] + 0.01:
            best = epoch
    assert t["stopped"] == "no_improvement" and t["epochs_planned"] == 6 and t["epochs_run"] < 6
    assert t["epochs_run"] == len(values) == best + 2
    assert t["best_epoch"] == t["restored_epoch"] == best
    assert t["reason"].startswith("no improvement of held-out Effusion AUROC at site-b") and "early_stopping" not in t
    assert f"stopped after {t['epochs_run']} of 6 epochs" in res.notes and f"kept epoch {best}'s weights" in res.notes
    # the candidate's tensors are the best epoch's: the held-out check (same rows, as probabilities) scores them so
    assert res.artifacts["checks"]["4"]["auroc"] == pytest.approx(values[best - 1], abs=2e-3)


def test_tune_block_restores_the_best_epochs_weights_through_the_watch(world):
    _, model, tr = world
    m = type(model)(model.spec)
    m.load_state_dict(model.state_dict())
    inputs = block_inputs(m, tr, 4)
    labels = tr.aligned_labels(model.spec.pathologies)
    seen, values = [], [0.3, 0.8, 0.4, 0.5, 0.9]

    def monitor(net):
        seen.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        net.eval()
        return values[len(seen) - 1]

    c = Consistency(images=tr.images, n=64, render=lambda z, rng: z, batch_size=32, epochs=1)
    watch = EpochWatch(m, 1 + 5, early=EarlyStopping(monitor, patience=2))
    losses = tune_block(m, 4, inputs, labels, np.ones_like(labels), np.zeros_like(labels), 0, epochs=5,
                        batch_size=64, consistency=c, after_epoch=lambda phase, n: watch.after_epoch(
                            n, monitored=phase == "labelled"))
    rec = watch.finish()
    assert len(losses) == 5 and rec.epochs_run == 5  # 1 consistency epoch (not scored), then 4 labelled of 5
    assert [v["epoch"] for v in rec.monitored] == [2, 3, 4, 5] and rec.stopped == "no_improvement"
    assert rec.best_epoch == rec.restored_epoch == 3  # 0.8, the second labelled epoch
    assert all(torch.equal(m.state_dict()[k], seen[1][k]) for k in seen[1])


@pytest.mark.slow  # a few (tiny) full retrains
def test_a_retrain_past_its_budget_stops_and_records_why(world, monkeypatch):
    ctx, model, _ = world
    monkeypatch.setattr(cxr.train, "budget_clock", Ticking(100))
    res = FullRetrain().apply(replace(ctx, params={"epochs": 4, "batch_size": 128, "time_budget_s": 150}))
    t = res.artifacts["training"]
    assert (t["epochs_run"], t["epochs_planned"], t["stopped"]) == (2, 4, "budget")
    assert len(res.artifacts["history"]) == 2
    assert "stopped after 2 of 4 epochs — budget: 150 s reached after 2 of 4 epochs" in res.notes
    assert set(res.state_updates) == set(model.state_dict()) and res.thresholds["Effusion"] is not None


@pytest.mark.slow
def test_a_retrain_with_early_stopping_holds_calibration_patients_out(world):
    ctx, _, _ = world
    res = FullRetrain().apply(replace(ctx, params={"epochs": 3, "batch_size": 128, "early_stop_patience": 1}))
    t = res.artifacts["training"]
    assert t["monitor"].startswith("held-out Effusion AUROC") and len(t["monitored"]) == t["epochs_run"]
    assert t["best_epoch"] == 1 + int(np.argmax([m["value"] for m in t["monitored"]]))
    trained_on = int(res.notes.split(" images")[0].rsplit(" ", 1)[1])
    assert 240 < trained_on < 240 + 400  # the training films and the calibration films not held out
    plain = FullRetrain().apply(replace(ctx, params={"epochs": 1, "batch_size": 128}))
    assert plain.artifacts["training"]["stopped"] == "completed" and "640 images" in plain.notes
