"""Training (seeded, resumable) and the feature cache."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cxr.data import phantom_dataset
from cxr.features import FeatureCache, extract_features, head_logits
from cxr.infer import predict_logits
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.train import TrainConfig, masked_bce, train
from cxr.weights import backbone_digest, tensors_digest


@pytest.fixture(scope="module")
def data():
    return phantom_dataset(PhantomConfig(n=96, resolution=32), workers=1)


CFG = TrainConfig(epochs=2, batch_size=32, seed=3, threads=1)


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    labels = torch.tensor([[1.0, float("nan"), float("nan")]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0]), torch.tensor([1.0]))
    assert torch.isclose(masked_bce(logits, labels), expected)
    assert masked_bce(logits, torch.full_like(labels, float("nan"))) == 0


def test_same_seed_same_weights(data):
    a = train(preset("tiny"), data, CFG)
    b = train(preset("tiny"), data, CFG)
    assert tensors_digest(a.model.state_dict()) == tensors_digest(b.model.state_dict())
    assert a.history[-1]["loss"] < a.history[0]["loss"] * 1.5


def test_resume_after_interruption_equals_uninterrupted(tmp_path, data):
    straight = train(preset("tiny"), data, CFG)
    first = train(preset("tiny"), data, CFG, checkpoint_dir=tmp_path, stop_after_epoch=1)
    assert len(first.history) == 1 and (tmp_path / "last.safetensors").is_file()
    resumed = train(preset("tiny"), data, CFG, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [2]
    assert tensors_digest(resumed.model.state_dict()) == tensors_digest(straight.model.state_dict())


def test_checkpoint_of_another_job_is_not_resumed(tmp_path, data):
    train(preset("tiny"), data, CFG, checkpoint_dir=tmp_path, stop_after_epoch=1)
    other = train(preset("tiny"), data, replace(CFG, seed=4), checkpoint_dir=tmp_path)
    assert other.resumed_from_epoch == 0


def test_feature_cache_hits_and_exact_logits(tmp_path, data):
    model = train(preset("tiny"), data, replace(CFG, epochs=1)).model
    cache = FeatureCache(tmp_path)
    f1 = cache.features(model, data)
    f2 = cache.features(model, data)
    assert (cache.misses, cache.hits) == (1, 1)
    assert np.array_equal(f1, f2)
    assert np.array_equal(f1, extract_features(model, data))
    # Logits from cached features equal the module's forward pass.
    w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    assert np.allclose(head_logits(f1, w, b), predict_logits(model, data), atol=1e-5)
    # Changing only the head keeps the backbone digest: still a hit.
    with torch.no_grad():
        model.classifier.weight.zero_()
    cache.features(model, data)
    assert cache.hits == 2
    # Other data: a miss.
    cache.features(model, data.subset(np.arange(10)))
    assert cache.misses == 2
    # Another backbone: a miss.
    with torch.no_grad():
        model.features.conv0.weight.mul_(1.01)
    cache.features(model, data, backbone_digest(model.state_dict()))
    assert cache.misses == 3
