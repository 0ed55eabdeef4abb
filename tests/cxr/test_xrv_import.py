"""Import of torchxrayvision checkpoints: pickles only with the trust flag, never downloads."""

import math
import pickle

import pytest
import torch
import torchxrayvision as xrv

from cxr.errors import InvalidInput, NotFound
from cxr.model import build_model, parameter_count
from cxr.weights import load_model, save_model
from cxr.xrv_import import import_checkpoint, resolve_weights_file

TINY = {"growth_rate": 4, "block_config": (1, 2, 1, 1), "num_init_features": 8, "bn_size": 2}


def _saved_like_torchxrayvision(path, **cfg):
    """torchxrayvision's released files are torch.save of a whole xrv DenseNet module."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(**cfg).eval()
    torch.save(model, path)
    return model


def test_pickled_module_is_refused_without_trust(tmp_path):
    path = tmp_path / "xrv.pt"
    _saved_like_torchxrayvision(path, **TINY)
    with pytest.raises(InvalidInput, match="--trust-pickle"):
        import_checkpoint(str(path))


def test_trusted_import_converts_with_identical_outputs(tmp_path):
    path = tmp_path / "xrv.pt"
    ref = _saved_like_torchxrayvision(path, **TINY)
    imp = import_checkpoint(str(path), trust_pickle=True)
    assert imp.unpickled
    assert imp.spec.block_config == (1, 2, 1, 1) and imp.spec.growth_rate == 4 and imp.spec.bn_size == 2
    model = build_model(imp.spec)
    model.load_state_dict(imp.state, strict=True)
    out = tmp_path / "converted.safetensors"
    save_model(out, model)
    again, _ = load_model(out)  # from now on: safetensors only
    x = torch.randn(2, 1, 64, 64) * 500
    with torch.no_grad():
        assert torch.equal(again(x), ref(x))


@pytest.mark.slow
def test_full_densenet121_import_keeps_every_parameter(tmp_path):
    path = tmp_path / "densenet121.pt"
    _saved_like_torchxrayvision(path)
    imp = import_checkpoint(str(path), trust_pickle=True, weights_name="densenet121-res224-all")
    model = build_model(imp.spec)
    model.load_state_dict(imp.state, strict=True)
    assert parameter_count(model) == 6_966_034
    assert imp.spec.resolution == 224
    # Thresholds come from torchxrayvision's table; all 18 are known for "all".
    assert set(imp.thresholds) == set(imp.spec.pathologies)
    assert all(t is not None and 0 < t < 1 for t in imp.thresholds.values())


def test_nan_thresholds_are_masked_not_half(tmp_path):
    path = tmp_path / "nih.pt"
    _saved_like_torchxrayvision(path, **TINY)
    imp = import_checkpoint(str(path), trust_pickle=True, weights_name="densenet121-res224-nih")
    # The NIH weights have 4 unnamed outputs with NaN thresholds: they are masked.
    assert imp.spec.pathologies[14:] == ("", "", "", "")
    assert len(imp.thresholds) == 14
    assert all(v is not None and not math.isnan(v) for v in imp.thresholds.values())


def test_state_dict_files_load_without_trust(tmp_path):
    torch.manual_seed(0)
    model = xrv.models.DenseNet(**TINY)
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    imp = import_checkpoint(str(path))
    assert not imp.unpickled


def test_compressed_release_format_is_understood(tmp_path):
    """{"alive_per_block", "state_dict"}: conv1 with bias, norm2 dropped (Identity)."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(**TINY)
    layer = model.features.denseblock2.denselayer1
    layer.conv1 = torch.nn.Conv2d(layer.conv1.in_channels, 3, 1, bias=True)
    layer.norm2 = torch.nn.BatchNorm2d(3)
    layer.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    ckpt = {"alive_per_block": {2: {"dl1": 3}}, "state_dict": model.state_dict()}
    path = tmp_path / "compressed_model.pt"
    torch.save(ckpt, path)
    imp = import_checkpoint(str(path))
    assert imp.spec.kept_channels == {"denseblock2.denselayer1": 3}
    m = build_model(imp.spec)
    m.load_state_dict(imp.state, strict=True)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/cxr_decide_pwned_marker",))


def test_an_arbitrary_pickle_is_never_executed_without_trust(tmp_path):
    import os

    marker = "/tmp/cxr_decide_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(InvalidInput):
        import_checkpoint(str(path))
    assert not os.path.exists(marker)


def test_weights_names_resolve_in_the_cache_dir_and_never_download(tmp_path):
    with pytest.raises(NotFound, match="nothing is downloaded"):
        resolve_weights_file("densenet121-res224-all", cache_dir=tmp_path)
    fname = xrv.models.model_urls["densenet121-res224-all"]["weights_url"].rsplit("/", 1)[1]
    (tmp_path / fname).write_bytes(b"x")
    path, name = resolve_weights_file("densenet121-res224-all", cache_dir=tmp_path)
    assert path.name == fname and name == "densenet121-res224-all"
