"""Backbone-level treatments on a tiny real world (32-pixel phantom films, a `tiny` DenseNet)."""

import numpy as np
import pytest
import torch

from cxr.blocks import Tail, block_inputs, tail_parameter_names
from cxr.data import phantom_dataset
from cxr.features import extract_features
from cxr.phantom import PhantomConfig
from cxr.spec import XRV_PATHOLOGIES, preset
from cxr.train import TrainConfig, train
from treatments.base import Case, FeatureSplit, ReportInfo, Slo, TreatmentContext
from treatments.freopt import FReoptimization
from treatments.retrain import AugmentationRetrain, FullRetrain


@pytest.fixture(scope="module")
def world():
    spec = preset("tiny")
    tr = phantom_dataset(PhantomConfig(site="site-a", n=240, resolution=32), workers=1)
    fb = phantom_dataset(PhantomConfig(site="site-b", split="feedback", n=240, resolution=32), workers=1)
    model = train(spec, tr, TrainConfig(epochs=1, batch_size=32, threads=1)).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w = model.classifier.weight.detach().numpy().copy()
    b = model.classifier.bias.detach().numpy().copy()
    split = FeatureSplit("calibration", extract_features(model, fb), fb.aligned_labels(spec.pathologies),
                         fb.image_ids, fb.sites)
    report = ReportInfo(1, "Effusion", "false_negatives", "recall", 0.3, 0.6, "site-b", (Case(fb.image_ids[0], .1, 1),))
    ctx = TreatmentContext(
        report=report, spec=spec, head_weight=w, head_bias=b, thresholds={p: 0.2 for p in XRV_PATHOLOGIES[:14]},
        train=None, calibration=split, slo=Slo(0.6, 0.5, 0.6), params={}, delta=0.2,
        load_state=lambda: {k: v.clone() for k, v in state.items()}, image_data={"train": tr, "calibration": fb},
    )
    return ctx, model, tr


def test_block_split_reproduces_the_forward_pass(world):
    _, model, tr = world
    x = block_inputs(model, tr.subset(np.arange(8)), 4)
    with torch.no_grad():
        assert torch.allclose(Tail(model, 4)(torch.from_numpy(x)), model(torch.from_numpy(tr.images(np.arange(8)))),
                              atol=1e-5)


def test_f_reoptimization_changes_only_the_tail(world):
    ctx, model, _ = world
    params = {"epochs": 2, "block": 4, "tune": "block+head", "second_block": False}  # the last block, its head
    res = FReoptimization().apply(ctx.__class__(**{**ctx.__dict__, "params": params}))
    assert set(res.state_updates) == set(tail_parameter_names(model, 4))
    assert not any(k.startswith("features.denseblock3") for k in res.state_updates)
    assert res.trainable_parameters > ctx.spec.num_features * ctx.spec.num_classes
    assert res.thresholds["Effusion"] is not None and len(res.artifacts["losses"]) == 2


@pytest.mark.parametrize("treatment", [FullRetrain(), AugmentationRetrain()])
def test_retrains_fine_tune_every_weight_from_the_parent(world, treatment):
    ctx, model, _ = world
    res = treatment.apply(ctx.__class__(**{**ctx.__dict__, "params": {"epochs": 1, "batch_size": 64}}))
    assert set(res.state_updates) == set(model.state_dict())
    changed = [k for k, v in res.state_updates.items() if not torch.equal(v, model.state_dict()[k])]
    assert any(k.startswith("features.conv0") for k in changed)
    assert res.thresholds["Effusion"] is not None


def test_a_tail_from_the_stem_reproduces_the_forward_pass(world):
    _, model, tr = world
    x = tr.images(np.arange(8))
    assert np.array_equal(block_inputs(model, tr.subset(np.arange(8)), 1, stem=True), x)  # the pixels themselves
    with torch.no_grad():
        assert torch.allclose(Tail(model, 1, stem=True)(torch.from_numpy(x)), model(torch.from_numpy(x)), atol=1e-5)
