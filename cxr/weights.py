"""Safe weight I/O: safetensors with the spec inside, digests checked on load.

File format: a safetensors file whose only metadata key, `cxr_decide`, holds
canonical JSON `{"format", "spec", "weights_sha256", "backbone_sha256"}`.
(One key, because safetensors writes a multi-key metadata map in hash-map order,
which would make the file bytes, and so the blob digest, vary run to run.)

* `weights_sha256` covers every tensor (name, dtype, shape, bytes, in name
  order); loading recomputes it and refuses a file whose bytes changed.
* `backbone_sha256` covers every tensor outside `classifier.*`: head-only
  treatments keep it, so the feature cache stays valid for them.

Storage follows `spec.dtype`: a float16 spec stores the weights in half
precision (BatchNorm running statistics stay float32: a few hundred numbers,
and the variance is where half precision would hurt), digests cover the stored
bytes, and loading upcasts to float32 (this CPU has no fast float16
arithmetic). An int8 spec (`runtime = "onnxruntime"`) holds the quantized
ONNX graph as one uint8 tensor, `onnx.model`, beside the float32 classifier;
it runs through ONNX Runtime (`cxr/quantize.py`), never as a torch module.

Nothing here unpickles. Importing torchxrayvision's pickled checkpoints is the
explicit, trust-flagged step in `cxr/xrv_import.py`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cxr.errors import IntegrityFailure, InvalidInput, NotFound
from cxr.files import atomic_write
from cxr.model import CXRDenseNet, build_model
from cxr.spec import ArchSpec

FORMAT = "cxr-decide/weights-1"
_META_KEY = "cxr_decide"
#: The tensor of an onnxruntime version that holds the serialized ONNX graph (uint8).
ONNX_TENSOR = "onnx.model"
#: Float tensors a float16 file keeps in float32.
_KEEP_FLOAT32 = (".running_mean", ".running_var")

State = dict[str, torch.Tensor]


def tensors_digest(state: State, *, exclude_prefix: str | None = None) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        if exclude_prefix and name.startswith(exclude_prefix):
            continue
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def backbone_digest(state: State) -> str:
    return tensors_digest(state, exclude_prefix="classifier.")


@dataclass(frozen=True)
class Weights:
    """Weights as loaded: spec, tensors and their digests."""

    spec: ArchSpec
    state: State
    weights_sha256: str
    backbone_sha256: str

    def model(self) -> CXRDenseNet:
        """An eval-mode module with these weights (float32); `InvalidInput` for an ONNX Runtime version."""
        if self.spec.runtime != "torch":
            raise InvalidInput(
                f"these weights run in {self.spec.runtime} ({self.spec.dtype}), not as a torch module; "
                "use cxr.quantize.OrtModel (or its float parent)", field="weights")
        m = build_model(self.spec)
        m.load_state_dict(self.state, strict=True)
        return m.eval()

    @property
    def onnx_bytes(self) -> bytes | None:
        """The serialized ONNX graph of an onnxruntime version, else None."""
        t = self.state.get(ONNX_TENSOR)
        return None if t is None else t.numpy().tobytes()


def _clean_state(state: State) -> State:
    # BatchNorm's num_batches_tracked is bookkeeping; keep it so that
    # torchxrayvision-style state dicts round-trip with strict=True.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def stored_state(spec: ArchSpec, state: State) -> State:
    """The tensors as the file stores them: float16 for a float16 spec (except BatchNorm statistics)."""
    if spec.dtype != "float16":
        return state
    return {k: v.half() if v.is_floating_point() and not k.endswith(_KEEP_FLOAT32) else v for k, v in state.items()}


def loaded_state(state: State) -> State:
    """Float tensors upcast to float32, as every model computes."""
    return {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}


def to_bytes(spec: ArchSpec, state: State) -> tuple[bytes, Weights]:
    """Serialise to safetensors bytes (deterministic for equal inputs).

    Returns the bytes and the weights exactly as a later `from_bytes` will see them (a float16
    spec's tensors rounded to half precision, then upcast).
    """
    state = stored_state(spec, _clean_state(state))
    w = Weights(spec, loaded_state(state), tensors_digest(state), backbone_digest(state))
    meta = {
        "format": FORMAT,
        "spec": json.loads(spec.to_json()),
        "weights_sha256": w.weights_sha256,
        "backbone_sha256": w.backbone_sha256,
    }
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return st_save(state, metadata={_META_KEY: text}), w


def from_bytes(data: bytes, *, source: str = "<bytes>") -> Weights:
    """Parse and verify; raise `IntegrityFailure` if the tensors changed."""
    try:
        state = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"not a safetensors weights file ({exc})", field=source) from None
    meta_text = (header.get("__metadata__") or {}).get(_META_KEY)
    if meta_text is None:
        raise InvalidInput(
            "safetensors file without cxr-decide metadata (import it with `decide import-weights`)",
            field=source,
        )
    meta = json.loads(meta_text)
    if meta.get("format") != FORMAT:
        raise InvalidInput(f"unsupported weights format {meta.get('format')!r}", field=source)
    spec = ArchSpec.from_json(meta["spec"])
    digest = tensors_digest(state)
    if digest != meta["weights_sha256"]:
        raise IntegrityFailure(
            f"{source}: weights digest mismatch (recorded {meta['weights_sha256'][:12]}, "
            f"found {digest[:12]}): the file was modified or corrupted; refusing to load"
        )
    return Weights(spec, loaded_state(state), digest, backbone_digest(state))


def save_weights(path: str | Path, spec: ArchSpec, state: State) -> Weights:
    """Write weights + spec atomically; return what was written (with digests)."""
    data, w = to_bytes(spec, state)
    atomic_write(Path(path), data)
    return w


def save_model(path: str | Path, model: CXRDenseNet) -> Weights:
    return save_weights(path, model.spec, model.state_dict())


def load_weights(path: str | Path) -> Weights:
    """Read and verify a weights file; never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such weights file", field=str(p))
    return from_bytes(p.read_bytes(), source=str(p))


def load_model(path: str | Path) -> tuple[CXRDenseNet, Weights]:
    w = load_weights(path)
    return w.model(), w
