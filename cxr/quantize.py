"""Quantization: float16 storage, and int8 static quantization for ONNX Runtime on CPUs.

* **float16 storage** (`float16_spec`): the weights file holds half-precision
  tensors (half the bytes) and loading upcasts them to float32, because this
  CPU (AVX2 + F16C, no AVX-512 FP16/AMX) has no fast float16 arithmetic: the
  gain is disk and transfer size, not speed. `cxr.weights` does the casting
  and verifies digests over the stored bytes.
* **int8** (`quantize_int8`): ONNX Runtime's `quantize_static`, QDQ format,
  per-channel int8 weights, uint8 activations calibrated (MinMax) on images
  of the calibration split. `reduce_range` (7-bit weights) is on by default:
  without VNNI, x86 int8 kernels multiply pairs of uint8 × int8 into int16
  (`vpmaddubsw`), which saturates on full-range weights; ONNX Runtime's
  documentation recommends it there. Whether int8 is faster on a given CPU is
  measured (`cxr.footprint`), never assumed. The classifier (`Gemm`) stays
  float32, so the graph's `features` output is what the engine's feature cache
  stores, and logits = the version's own classifier over those features
  (`OrtModel`), which keeps head-level treatments working on an int8 version.

`torch.ao.quantization` is deprecated and is not used.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet
from cxr.onnx_export import export_onnx, ort_session
from cxr.spec import ArchSpec
from cxr.weights import ONNX_TENSOR, Weights

log = logging.getLogger(__name__)


def float16_spec(spec: ArchSpec) -> ArchSpec:
    """The same architecture stored in float16 (torch runtime)."""
    return spec.model_copy(update={"dtype": "float16", "runtime": "torch"})


def int8_spec(spec: ArchSpec) -> ArchSpec:
    """The same architecture as an int8 ONNX Runtime graph."""
    return spec.model_copy(update={"dtype": "int8", "runtime": "onnxruntime"})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an image array."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._it = iter([{"image": np.ascontiguousarray(images[s:s + batch_size], dtype=np.float32)}
                         for s in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


class _QuietOnnxRuntime(logging.Filter):
    """Drop onnxruntime.quantization's root-logger advice while it runs (we log what was done)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


def quantize_int8(model: CXRDenseNet, calibration_images: np.ndarray, *, per_channel: bool = True,
                  reduce_range: bool = True, batch_size: int = 32, **export_kw: Any) -> bytes:
    """Int8 QDQ ONNX bytes of `model`, calibrated on `calibration_images` (N, C, R, R) float32.

    `export_kw` go to `export_onnx` (thresholds, version, ...). Raises `InvalidInput` without images
    or without onnxruntime.
    """
    if len(calibration_images) == 0:
        raise InvalidInput("int8 calibration needs images", field="calibration")
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:  # pragma: no cover - the optional extra
        raise InvalidInput("ONNX Runtime is not installed: pip install 'cxr-decide[onnx]'", field="runtime") from exc
    import onnx

    from cxr.onnx_export import set_metadata

    data = export_onnx(model, **export_kw)
    log.info("int8 static quantization on %d calibration images", len(calibration_images))
    proto = onnx.load_from_string(data)
    keep_float = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "Sigmoid", "MatMul")]
    quiet = _QuietOnnxRuntime()  # its advice ("consider pre-processing") goes to the root logger, not ours
    root = logging.getLogger()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        root.addFilter(quiet)
        for h in root.handlers:
            h.addFilter(quiet)
        try:
            quantize_static(str(src), str(dst), _Reader(calibration_images, batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float,
                            op_types_to_quantize=["Conv"])
        finally:
            root.removeFilter(quiet)
            for h in root.handlers:
                h.removeFilter(quiet)
        out = onnx.load(str(dst))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["cxr_decide.spec"] = int8_spec(model.spec).to_json()
    meta["cxr_decide.quantization"] = json.dumps({
        "format": "QDQ", "per_channel": per_channel, "reduce_range": reduce_range, "weights": "int8",
        "activations": "uint8", "calibration": "MinMax", "calibration_images": len(calibration_images),
        "float32": sorted(keep_float)}, sort_keys=True)
    set_metadata(out, meta)
    return out.SerializeToString()


def int8_state(onnx_bytes: bytes, classifier_weight: torch.Tensor, classifier_bias: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """The weights-file tensors of an int8 version: the graph as uint8 bytes and the float32 classifier."""
    return {ONNX_TENSOR: torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8).clone(),
            "classifier.weight": classifier_weight.detach().float().contiguous(),
            "classifier.bias": classifier_bias.detach().float().contiguous()}


class OrtModel:
    """An onnxruntime version behaving like `CXRDenseNet` where the engine needs it: `spec`, `eval()`,
    `pooled(x)` (the graph's features) and `model(x)` (the version's classifier over them)."""

    def __init__(self, weights: Weights, threads: int | None = None) -> None:
        data = weights.onnx_bytes
        if data is None:
            raise InvalidInput("these weights hold no ONNX graph", field="weights")
        self.spec = weights.spec
        self.session = ort_session(data, threads)
        self.weight = weights.state["classifier.weight"].float()
        self.bias = weights.state["classifier.bias"].float()

    def eval(self) -> OrtModel:
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        return torch.from_numpy(self.session.run(["features"], {"image": x})[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.pooled(x), self.weight, self.bias)


def runnable(weights: Weights) -> CXRDenseNet | OrtModel:
    """What computes this version's outputs: its torch module, or an `OrtModel` for an int8 graph."""
    return OrtModel(weights) if weights.spec.runtime == "onnxruntime" else weights.model()
