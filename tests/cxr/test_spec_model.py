"""Spec ↔ module: parameter counts, JSON round trip, compressed layers, validation."""

import pytest
import torch
import torchxrayvision as xrv

from cxr.errors import InvalidInput
from cxr.model import build_model, parameter_count
from cxr.spec import PRESETS, ArchSpec, preset


def test_densenet121_has_torchxrayvision_parameter_count_and_keys():
    spec = preset("densenet121")
    model = build_model(spec)
    assert parameter_count(model) == 6_966_034
    ref = xrv.models.DenseNet()
    assert parameter_count(ref) == 6_966_034
    # Same module tree: torchxrayvision's state dict loads strictly, outputs match.
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    ref.eval()
    x = torch.randn(2, 1, 224, 224) * 500
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert spec.num_features == 1024


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_spec_json_round_trip(name):
    spec = PRESETS[name]
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert again.digest() == spec.digest()
    model = build_model(again, seed=1)
    assert model.classifier.in_features == spec.num_features
    assert model.classifier.out_features == 18


def test_compressed_layers_follow_the_release_format():
    base = preset("tiny")
    spec = base.model_copy(update={"kept_channels": {"denseblock1.denselayer1": 3, "denseblock3.denselayer1": 5}})
    spec = ArchSpec.from_json(spec.to_json())
    m = build_model(spec)
    layer = m.features.denseblock1.denselayer1
    assert layer.conv1.out_channels == 3 and layer.conv1.bias is not None
    assert isinstance(layer.norm2, torch.nn.Identity)
    assert layer.conv2.in_channels == 3
    untouched = m.features.denseblock2.denselayer1
    assert untouched.conv1.bias is None and isinstance(untouched.norm2, torch.nn.BatchNorm2d)
    assert parameter_count(m) < parameter_count(build_model(base))
    out = m(torch.randn(2, 1, spec.resolution, spec.resolution))
    assert out.shape == (2, 18)


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"growth_rate": 0}, "growth_rate"),
        ({"block_config": [1, 0]}, "block_config"),
        ({"kept_channels": {"denseblock9.denselayer1": 2}}, "spec"),
        ({"kept_channels": {"nonsense": 2}}, "spec"),
        ({"pathologies": ["A", "A"]}, "pathologies"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_spec_names_the_field(update, field):
    data = PRESETS["tiny"].model_dump(mode="json") | update
    with pytest.raises(InvalidInput) as exc:
        ArchSpec.from_json(data)
    assert field in str(exc.value)


def test_unknown_preset_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown preset"):
        preset("resnet")
