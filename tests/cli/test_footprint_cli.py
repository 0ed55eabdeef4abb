"""`decide export-onnx` (ONNX Runtime matches PyTorch, metadata for deployment, int8) and
`decide import-weights --register` of the compressed-CheXNet release format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from typer.testing import CliRunner

from cli.app import app

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytestmark = pytest.mark.xdist_group("tiny-home")


def _invoke(home, *args):
    return CliRunner().invoke(app, list(args), env={"DECIDE_HOME": str(home)})


def test_export_onnx_matches_pytorch_and_carries_the_operating_points(tiny_home, tmp_path):
    from cxr.onnx_export import ort_session, read_metadata
    from decision.catalog import Catalog
    from registry import repo
    from registry.session import session_scope

    out = tmp_path / "cxr.onnx"
    res = _invoke(tiny_home.home, "export-onnx", "cxr@production", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["max_abs_delta"]["logits"] <= got["tolerance"] == 1e-3 and not got["int8"]
    assert "phantom-site-a-calibration" in got["checked_on"]
    data = out.read_bytes()
    meta = read_metadata(data)
    with session_scope(tiny_home.url, read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
    assert json.loads(meta["cxr_decide.operating_points"])["default"] == v.thresholds
    assert meta["cxr_decide.version"] == v.ref
    recipe = json.loads(meta["cxr_decide.preprocessing_recipe"])  # tests/cxr/test_onnx_recipe.py replays it
    assert recipe["resolution"] == 32 and recipe["steps"][3]["function"] == "skimage.transform.resize"
    # an independent check: run the file with ONNX Runtime on fresh pixels, compare with the registered model
    model = Catalog(tiny_home.home).weights(v).model()
    x = (np.random.default_rng(5).random((6, 1, 32, 32), dtype=np.float32) * 2 - 1) * 1024
    probs = ort_session(data).run(["probabilities"], {"image": x})[0]
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    assert np.abs(probs - ref).max() < 1e-4


def test_export_onnx_int8_reports_its_error(tiny_home, tmp_path):
    out = tmp_path / "cxr-int8.onnx"
    res = _invoke(tiny_home.home, "export-onnx", "cxr@production", "--out", str(out), "--int8",
                  "--calibration-images", "32", "--check-images", "16", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["int8"] and got["tolerance"] is None and got["max_abs_delta"]["logits"] > 0
    assert "cxr_decide.quantization" in got["metadata"]


def test_export_onnx_of_an_unknown_version_exits_2(tiny_home, tmp_path):
    res = _invoke(tiny_home.home, "export-onnx", "cxr:99", "--out", str(tmp_path / "x.onnx"))
    assert res.exit_code == 2


def _paper_checkpoint(path):
    """A checkpoint built the way the compressed-CheXNet README loads it, and the hand-built model."""
    torch.manual_seed(0)
    cfg = {"growth_rate": 4, "block_config": (1, 2, 1, 1), "num_init_features": 8, "bn_size": 2}
    model = xrv.models.DenseNet(**cfg)
    alive = {1: {"dl1": 5}, 2: {"dl1": 3, "dl2": 8}, 3: {"dl1": 2}, 4: {"dl1": 6}}
    for b, layers in alive.items():
        block = getattr(model.features, f"denseblock{b}")
        for key, n in layers.items():
            layer = getattr(block, f"denselayer{key[2:]}")
            layer.conv1 = torch.nn.Conv2d(layer.conv1.in_channels, n, 1, bias=True)
            layer.norm2 = torch.nn.BatchNorm2d(n)
            layer.conv2 = torch.nn.Conv2d(n, 4, 3, padding=1, bias=False)
    torch.save({"alive_per_block": alive, "state_dict": model.state_dict()}, path)
    for b, layers in alive.items():  # as the README does after loading
        for key in layers:
            getattr(getattr(model.features, f"denseblock{b}"), f"denselayer{key[2:]}").norm2 = torch.nn.Identity()
    return model.eval()


def test_import_weights_registers_the_paper_format_in_one_step(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DECIDE_HOME", str(home))
    assert _invoke(home, "init").exit_code == 0
    ckpt = tmp_path / "compressed_model.pt"
    hand_built = _paper_checkpoint(ckpt)
    out = tmp_path / "compressed.safetensors"
    res = _invoke(home, "import-weights", str(ckpt), "--out", str(out), "--register", "--promote", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["registered"] == "cxr:1" and not got["unpickled"]
    from cxr.weights import load_model
    from registry import repo
    from registry.session import session_scope

    ours, _w = load_model(out)
    x = torch.randn(3, 1, 224, 224) * 400
    with torch.no_grad():
        assert torch.equal(ours(x), hand_built(x))  # identical outputs, not merely close
    with session_scope(f"sqlite:///{home / 'registry.db'}", read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
    assert v.weights_digest and json.loads(v.spec_json)["kept_channels"]["denseblock2.denselayer1"] == 3
    assert v.footprint["parameters"] == got["parameters"] == v.parameter_count


def test_import_weights_refuses_a_poisoned_pickle_with_exit_2(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"alive_per_block": {}, "state_dict": Evil()}))
    res = _invoke(tmp_path / "home", "import-weights", str(path), "--out", str(tmp_path / "x.safetensors"),
                  "--register")
    assert res.exit_code == 2 and "pwned" not in res.output


def test_export_of_a_registered_int8_version_uses_its_own_classifier(tiny_home, tmp_path):
    """An int8 version whose head changed after quantization (e.g. a later head retrain) is exported with
    the version's classifier, not the one frozen into its graph."""
    from cxr.onnx_export import ort_session, preprocessing_metadata, read_metadata
    from cxr.quantize import int8_spec, int8_state, quantize_int8
    from cxr.weights import to_bytes
    from decision.catalog import Catalog
    from decision.registration import register_weights_bytes
    from registry import repo
    from registry.session import session_scope

    with session_scope(tiny_home.url, read_only=True) as s:
        v = repo.resolve_version(s, "cxr@production")
    m = Catalog(tiny_home.home).weights(v).model()
    x = (np.random.default_rng(3).random((16, 1, 32, 32), dtype=np.float32) * 2 - 1) * 1024
    graph = _with_the_old_words(quantize_int8(m, x))
    head = m.classifier.weight.detach() * 0.5
    data, _ = to_bytes(int8_spec(m.spec), int8_state(graph, head, m.classifier.bias))
    with session_scope(tiny_home.url) as s:
        v8 = register_weights_bytes(s, data, "cxr", parent=v.id, home=tiny_home.home)
    assert v8.footprint["dtype"] == "int8" and v8.footprint["runtime"] == "onnxruntime"
    out = tmp_path / "v8.onnx"
    res = _invoke(tiny_home.home, "export-onnx", v8.ref, "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["int8"] and got["max_abs_delta"]["logits"] < 1e-4
    logits, feats = ort_session(out.read_bytes()).run(["logits", "features"], {"image": x})
    expected = torch.nn.functional.linear(torch.from_numpy(feats), head, m.classifier.bias.detach()).numpy()
    assert np.abs(logits - expected).max() < 1e-4
    # a graph quantized while the export still said "area averaging" leaves with today's recipe
    meta = read_metadata(out.read_bytes())
    assert meta["cxr_decide.preprocessing"] == preprocessing_metadata(m.spec)["cxr_decide.preprocessing"]
    assert json.loads(meta["cxr_decide.preprocessing_recipe"])["steps"][3]["function"] == "skimage.transform.resize"


def _with_the_old_words(graph: bytes) -> bytes:
    """`graph` with the preprocessing metadata the export wrote before issue 18 (no recipe, area resize)."""
    import onnx

    proto = onnx.load_from_string(graph)
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("cxr_decide.preprocessing")]
    del proto.metadata_props[:]
    for k, val in [*keep, ("cxr_decide.preprocessing", json.dumps({"steps": ["resize to 32x32 with area averaging"]}))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, val
    return proto.SerializeToString()
