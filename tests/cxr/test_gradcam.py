"""Grad-CAM: the exact CAM identity at the last map, batch independence, no side effects on the
model, the randomisation sanity check, bad inputs, and `decide explain` writing PNG overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from cxr.data import phantom_dataset
from cxr.errors import InvalidInput
from cxr.gradcam import auto_layer, grad_cam
from cxr.images import write_folder
from cxr.infer import predict_logits
from cxr.model import build_model
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.weights import save_model


@pytest.fixture(scope="module")
def data():
    return phantom_dataset(PhantomConfig(n=12, resolution=32), workers=1)


@pytest.fixture(scope="module")
def model():
    return build_model(preset("tiny"), seed=0)


def test_the_last_map_is_exact_cam_its_mean_is_the_logit_minus_the_bias(model, data):
    x = data.images(np.arange(len(data)))
    exp = grad_cam(model, x, "Cardiomegaly")
    j = list(model.spec.pathologies).index("Cardiomegaly")
    bias = float(model.classifier.bias[j].detach())
    np.testing.assert_allclose(exp.logits, predict_logits(model, data)[:, j], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exp.raw_mean, exp.logits - bias, rtol=1e-4, atol=1e-4)
    assert exp.maps.shape == (len(data), 32, 32) and exp.maps.min() >= 0 and exp.maps.max() <= 1
    peaks = exp.maps.reshape(len(data), -1).max(axis=1)
    assert np.all((np.abs(peaks - 1) < 1e-6) | (peaks == 0))  # each map scaled to its own peak


def test_a_batch_explains_each_image_as_if_alone_and_leaves_the_model_untouched(model, data):
    x = data.images(np.arange(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    both = grad_cam(model, x, "Effusion", layer="features.denseblock2")
    alone = grad_cam(model, x[3:4], "Effusion", layer="features.denseblock2")
    np.testing.assert_allclose(both.maps[3], alone.maps[0], atol=1e-5)
    assert model.training  # its mode is given back
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too


def test_the_map_depends_on_the_classifier_row(model, data):
    """Adebayo et al. (2018): a saliency method must change when the weights it explains are randomised."""
    x = data.images(np.arange(6))
    j = list(model.spec.pathologies).index("Mass")
    first = grad_cam(model, x, "Mass").maps
    other = build_model(preset("tiny"), seed=0)
    with torch.no_grad():
        row = other.classifier.weight[j]
        row.copy_(torch.randn(row.shape, generator=torch.Generator().manual_seed(1)) * row.abs().mean())
    changed = grad_cam(other, x, "Mass").maps
    corr = np.corrcoef(first.ravel(), changed.ravel())[0, 1]
    assert corr < 0.9, corr


def test_auto_layer_is_the_deepest_map_wide_enough_to_show_something():
    assert auto_layer(build_model(preset("densenet121"), seed=0)) == "features"  # 7 x 7 at 224 px: exact CAM
    compact = build_model(preset("compact"), seed=0)
    compact.train()
    before = compact.features.norm0.running_mean.clone()
    assert auto_layer(compact) == "features.denseblock2"  # 64 px: the last map is 2 x 2, this one 8 x 8
    assert compact.training and torch.equal(before, compact.features.norm0.running_mean)


@pytest.mark.parametrize(("kw", "field"), [({"pathology": "Flu"}, "pathology"), ({"layer": "features.nope"}, "layer")])
def test_bad_pathology_or_layer_is_refused(model, data, kw, field):
    args = {"pathology": "Effusion", **kw}
    with pytest.raises(InvalidInput) as err:
        grad_cam(model, data.images([0]), args["pathology"], layer=kw.get("layer", "features"))
    assert err.value.field == field


def test_decide_explain_writes_png_overlays(model, data, tmp_path):
    write_folder(data.subset([0, 1]), tmp_path / "films")
    films = sorted((tmp_path / "films" / "images").glob("*.png"))
    weights = tmp_path / "tiny.safetensors"
    save_model(weights, model)
    runner = CliRunner()
    res = runner.invoke(app, ["explain", *map(str, films), "--pathology", "Cardiomegaly", "--weights", str(weights),
                              "--out", str(tmp_path / "heat"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["image"] for r in rows] == [str(f) for f in films]
    for r in rows:
        with Image.open(r["overlay"]) as im:
            assert im.format == "PNG" and im.size[0] > 100
        assert 0 < r["probability"] < 1
    res = runner.invoke(app, ["explain", str(films[0]), "--pathology", "Cardiomegaly"])
    assert res.exit_code == 2 and "--weights" in res.output


@pytest.mark.xdist_group("tiny-home")
def test_decide_explain_a_registered_version(tiny_home, data, tmp_path):
    write_folder(data.subset([2]), tmp_path / "films")
    [film] = sorted((tmp_path / "films" / "images").glob("*.png"))
    res = CliRunner().invoke(app, ["explain", str(film), "--pathology", "Effusion", "--version", "cxr@production",
                                   "--out", str(tmp_path / "heat"), "--json"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)
    assert row["layer"] == "features.denseblock1" and (tmp_path / "heat" / f"{film.stem}-Effusion.png").is_file()
