"""ONNX export: a model hospitals can run with ONNX Runtime or Triton, without this repository.

The exported graph takes `image` (batch, channels, R, R) float32 in
torchxrayvision's range and returns `logits`, `probabilities` (sigmoid) and
`features` (the pooled classifier input, which the engine caches for head-level
treatments and for evaluating an int8 version). The model's metadata
(`metadata_props`) carries what a deployment needs to use it correctly:

* `cxr_decide.preprocessing`: how a film becomes input, in words (`steps`: read
  as grey intensities in [0, 1], ×2048 − 1024, centre crop to a square, then
  scikit-image's anti-aliased `resize` to R×R exactly as torchxrayvision's
  `XRayResizer` calls it — not area averaging) beside the tensor's name,
  layout, dtype and resolution,
* `cxr_decide.preprocessing_recipe`: the same steps as values (functions and
  their exact arguments; `cxr.images.preprocessing_recipe`, the one place the
  product's preprocessing is described), for a deployment to follow,
* `cxr_decide.pathologies`: the output order,
* `cxr_decide.operating_points`: the version's per-pathology thresholds (null
  where none is certified) and per-site overrides,
* `cxr_decide.spec` and `cxr_decide.version`: the architecture and where the
  model came from.

The export uses torch's TorchScript-based exporter (`dynamo=False`): on this
CPU it takes a fraction of a second where the torch.export-based one takes
10–20 s, and both give the same graph up to float rounding; if a future torch
drops it, the dynamo exporter (which needs `onnxscript`) is used instead.
`check_against_torch` runs the graph in ONNX Runtime and reports the largest
|Δ| from PyTorch's outputs on the same inputs.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.errors import InvalidInput
from cxr.images import preprocessing_recipe
from cxr.model import CXRDenseNet
from cxr.spec import ArchSpec

log = logging.getLogger(__name__)

OUTPUTS = ("logits", "probabilities", "features")
OPSET = 17


def preprocessing_metadata(spec: ArchSpec) -> dict[str, str]:
    """The preprocessing a deployment must apply, as `metadata_props` entries (JSON text each).

    `cxr_decide.preprocessing`: the steps in words (`steps`, one sentence each) and the input
    tensor; `cxr_decide.preprocessing_recipe`: `cxr.images.preprocessing_recipe` for the spec's
    resolution, the same steps as values. Both come from the recipe, so they say the same.
    """
    recipe = preprocessing_recipe(spec.resolution)
    summary = {
        "input": "image", "layout": "NCHW", "dtype": "float32", "channels": spec.in_channels,
        "resolution": spec.resolution, "key": spec.preprocessing.key(),
        "key_note": "the spec's name for this preprocessing (its 'area' is a historical label, not the method); "
                    "the steps say what is done",
        "steps": [step["text"] for step in recipe["steps"]],
        "recipe": "cxr_decide.preprocessing_recipe",
        "outputs": {"logits": "per-pathology logits", "probabilities": "sigmoid(logits)",
                    "features": "pooled classifier input"},
    }
    return {"cxr_decide.preprocessing": json.dumps(summary, sort_keys=True),
            "cxr_decide.preprocessing_recipe": json.dumps(recipe, sort_keys=True)}


class _Graph(nn.Module):
    def __init__(self, model: CXRDenseNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.model.pooled(x)
        z = self.model.classifier(f)
        return z, torch.sigmoid(z), f


def export_onnx(model: CXRDenseNet, *, thresholds: Mapping[str, float | None] | None = None,
                site_thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
                version: str = "", extra: Mapping[str, Any] | None = None) -> bytes:
    """Serialize `model` (float32, eval mode) to ONNX bytes with its metadata (see the module docstring)."""
    import onnx

    was_training = model.training
    s = model.spec
    x = torch.zeros(1, s.in_channels, s.resolution, s.resolution)
    buf = io.BytesIO()
    graph = _Graph(model).eval()  # the exporter restores the wrapper's mode afterwards: make it eval
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(graph, (x,), buf, dynamo=False, input_names=["image"], output_names=list(OUTPUTS),
                              dynamic_axes={n: {0: "batch"} for n in ("image", *OUTPUTS)},
                              opset_version=OPSET, do_constant_folding=True)
        proto = onnx.load_from_string(buf.getvalue())
    except (TypeError, RuntimeError, ImportError) as exc:  # no TorchScript exporter: the dynamo one
        log.info("TorchScript ONNX exporter unavailable (%s); using torch.export", exc)
        prog = torch.onnx.export(graph, (x,), None, dynamo=True, input_names=["image"], output_names=list(OUTPUTS),
                                 dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=18)
        proto = prog.model_proto
    finally:
        model.train(was_training)
    meta = {
        **preprocessing_metadata(s),
        "cxr_decide.pathologies": json.dumps(list(s.pathologies)),
        "cxr_decide.operating_points": json.dumps(
            {"default": dict(thresholds or {}), "sites": {k: dict(v) for k, v in (site_thresholds or {}).items()}},
            sort_keys=True),
        "cxr_decide.spec": s.to_json(),
        "cxr_decide.version": version,
        **{f"cxr_decide.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
           for k, v in (extra or {}).items()},
    }
    set_metadata(proto, meta)
    proto.producer_name = "cxr-decide"
    return proto.SerializeToString()


def set_metadata(proto: Any, meta: Mapping[str, str]) -> None:
    """Replace (or add) `metadata_props` entries of an ONNX ModelProto, in key order."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for k, v in sorted([*keep, *meta.items()]):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(data: bytes) -> dict[str, str]:
    """The `metadata_props` of serialized ONNX bytes."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


def ort_session(data: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for serialized ONNX bytes (`threads` intra-op threads; None: ORT's default)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - the optional extra
        raise InvalidInput("ONNX Runtime is not installed: pip install 'cxr-decide[onnx]'", field="runtime") from exc
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def check_against_torch(model: CXRDenseNet, data: bytes, images: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Largest |Δ| between ONNX Runtime and PyTorch on `images`, per output (logits, probabilities, features)."""
    sess = ort_session(data)
    model.eval()
    worst = dict.fromkeys(OUTPUTS, 0.0)
    for s in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[s:s + batch_size], dtype=np.float32)
        got = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {"image": x}), strict=True))
        f = model.pooled(torch.from_numpy(x))
        z = model.classifier(f)
        ref = {"logits": z, "probabilities": torch.sigmoid(z), "features": f}
        for k in OUTPUTS:
            worst[k] = max(worst[k], float(np.abs(got[k] - ref[k].numpy()).max()))
    return worst
