"""ONNX export (metadata, ONNX Runtime vs PyTorch), int8 static quantization, int8 weights files, latency."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from cxr.errors import InvalidInput
from cxr.footprint import cpu_facts, measure_latency, static_footprint, torch_runner
from cxr.model import build_model
from cxr.onnx_export import check_against_torch, export_onnx, read_metadata
from cxr.quantize import OrtModel, int8_spec, int8_state, quantize_int8, runnable
from cxr.spec import preset
from cxr.weights import ONNX_TENSOR, from_bytes, to_bytes


def calibrated(spec, seed=0):
    """A random model whose BatchNorm statistics are those of its own activations (like a trained one)."""
    m = build_model(spec, seed=seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average
    with torch.no_grad():
        for k in range(4):
            m(torch.from_numpy(_images(32, seed=100 + k, r=spec.resolution)))
        m.eval()
        x = torch.from_numpy(_images(64, seed=99, r=spec.resolution))
        m.classifier.weight.mul_(2.0 / float(m(x).std()))  # logits of a trained model's spread
    return m


@pytest.fixture(scope="module")
def model():
    return calibrated(preset("tiny"))


def _images(n, seed=0, r=32):
    return ((np.random.default_rng(seed).random((n, 1, r, r), dtype=np.float32) * 2 - 1) * 1024)


def test_export_matches_pytorch_and_carries_metadata(model):
    data = export_onnx(model, thresholds={"Cardiomegaly": 0.31, "Hernia": None},
                       site_thresholds={"site-b": {"Cardiomegaly": 0.4}}, version="cxr:3")
    assert not model.training  # exporting leaves the model's mode alone
    worst = check_against_torch(model, data, _images(40))
    assert worst["logits"] < 1e-3 and worst["probabilities"] < 1e-4 and worst["features"] < 1e-3
    meta = read_metadata(data)
    ops = json.loads(meta["cxr_decide.operating_points"])
    assert ops["default"] == {"Cardiomegaly": 0.31, "Hernia": None} and ops["sites"]["site-b"]["Cardiomegaly"] == 0.4
    assert json.loads(meta["cxr_decide.pathologies"])[10] == "Cardiomegaly"
    pre = json.loads(meta["cxr_decide.preprocessing"])
    recipe = json.loads(meta["cxr_decide.preprocessing_recipe"])
    assert pre["resolution"] == recipe["resolution"] == 32 and pre["recipe"] == "cxr_decide.preprocessing_recipe"
    assert pre["steps"] == [s["text"] for s in recipe["steps"]] and "(2 * v - 1) * 1024" in pre["steps"][1]
    resize = recipe["steps"][3]  # what XRayResizer calls, not the "area averaging" the export used to claim
    assert (resize["function"], resize["output_shape"], resize["kwargs"]) == (
        "skimage.transform.resize", [1, 32, 32], {"mode": "constant", "preserve_range": True})
    assert meta["cxr_decide.version"] == "cxr:3" and meta["cxr_decide.spec"] == model.spec.to_json()


def test_int8_quantization_runs_in_onnxruntime_close_to_float(model):
    data = quantize_int8(model, _images(64, seed=1))
    meta = read_metadata(data)
    q = json.loads(meta["cxr_decide.quantization"])
    assert q["format"] == "QDQ" and q["reduce_range"] and q["per_channel"]
    assert json.loads(meta["cxr_decide.preprocessing_recipe"])["resolution"] == 32  # the float export's recipe
    assert json.loads(meta["cxr_decide.spec"])["dtype"] == "int8"
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    spec = int8_spec(model.spec)
    blob, w = to_bytes(spec, int8_state(data, model.classifier.weight, model.classifier.bias))
    loaded = from_bytes(blob)
    assert loaded.onnx_bytes == data and loaded.weights_sha256 == w.weights_sha256
    assert ONNX_TENSOR in loaded.state and loaded.backbone_sha256 != loaded.weights_sha256
    with pytest.raises(InvalidInput, match="onnxruntime"):
        loaded.model()
    ort = runnable(loaded)
    assert isinstance(ort, OrtModel)
    x = torch.from_numpy(_images(32, seed=2))
    with torch.no_grad():
        ref = model(x)
    got = ort(x)
    assert got.shape == ref.shape
    # int8 is an approximation: close in scale, strongly correlated, not identical
    assert ref.std(0).min() > 0  # the outputs vary with the input (a degenerate model would prove nothing)
    err = (got - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.5
    assert np.corrcoef(got.flatten().numpy(), ref.flatten().numpy())[0, 1] > 0.95
    fp = static_footprint(loaded, len(blob))
    assert fp["dtype"] == "int8" and fp["runtime"] == "onnxruntime" and fp["parameters"] > 0


def test_latency_is_measured_side_by_side_with_cpu_facts(model):
    cpu = cpu_facts()
    assert cpu["logical_cores"] >= 1 and isinstance(cpu["flags"], list)
    got = measure_latency({"a": torch_runner(model), "b": torch_runner(model)}, (1, 32, 32), (1, 4), repeats=2)
    assert set(got["ms_per_image"]) == {"a", "b"} and set(got["ms_per_image"]["a"]) == {1, 4}
    assert all(v > 0 for r in got["ms_per_image"].values() for v in r.values())
    assert got["cpu"]["flags"] == cpu["flags"]


def test_quantize_needs_images(model):
    with pytest.raises(InvalidInput):
        quantize_int8(model, np.zeros((0, 1, 32, 32), np.float32))
