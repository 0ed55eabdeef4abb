"""Safetensors weights: round trip, determinism, tamper detection, atomic writes."""

import pytest
import torch

from cxr.errors import IntegrityFailure, InvalidInput, NotFound
from cxr.model import build_model
from cxr.spec import preset
from cxr.weights import backbone_digest, load_model, load_weights, save_model, to_bytes


def test_round_trip_gives_identical_outputs(tmp_path):
    spec = preset("tiny")
    model = build_model(spec, seed=3).eval()
    w = save_model(tmp_path / "m.safetensors", model)
    again, loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.spec == spec
    assert loaded.weights_sha256 == w.weights_sha256
    x = torch.randn(4, 1, spec.resolution, spec.resolution) * 300
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_bytes_are_deterministic_and_seed_dependent():
    spec = preset("tiny")
    a, wa = to_bytes(spec, build_model(spec, seed=0).state_dict())
    b, wb = to_bytes(spec, build_model(spec, seed=0).state_dict())
    _c, wc = to_bytes(spec, build_model(spec, seed=1).state_dict())
    assert a == b and wa.weights_sha256 == wb.weights_sha256
    assert wc.weights_sha256 != wa.weights_sha256


def test_backbone_digest_ignores_the_classifier():
    spec = preset("tiny")
    m = build_model(spec, seed=0)
    before = backbone_digest(m.state_dict())
    with torch.no_grad():
        m.classifier.weight[3, :2] = 0.0
    assert backbone_digest(m.state_dict()) == before
    with torch.no_grad():
        m.features.conv0.weight[0, 0, 0, 0] += 1.0
    assert backbone_digest(m.state_dict()) != before


def test_changed_bytes_are_refused(tmp_path):
    spec = preset("tiny")
    path = tmp_path / "m.safetensors"
    save_model(path, build_model(spec, seed=0))
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # flip a bit inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure, match="digest mismatch"):
        load_weights(path)


def test_garbage_and_missing_files_are_invalid_input(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InvalidInput, match="not a safetensors"):
        load_weights(bad)
    with pytest.raises(NotFound):
        load_weights(tmp_path / "missing.safetensors")


def test_foreign_safetensors_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(p))
    with pytest.raises(InvalidInput, match="without cxr-decide metadata"):
        load_weights(p)
