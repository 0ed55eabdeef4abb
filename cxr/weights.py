"""Safe weight I/O: safetensors with the spec inside, digests checked on load.

File format: a safetensors file whose only metadata key, `cxr_decide`, holds
canonical JSON `{"format", "spec", "weights_sha256", "backbone_sha256"}`.
(One key, because safetensors writes a multi-key metadata map in hash-map order,
which would make the file bytes, and so the blob digest, vary run to run.)

* `weights_sha256` covers every tensor (name, dtype, shape, bytes, in name
  order); loading recomputes it and refuses a file whose bytes changed.
* `backbone_sha256` covers every tensor outside `classifier.*`: head-only
  treatments keep it, so the feature cache stays valid for them.

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
        """An eval-mode module with these weights."""
        m = build_model(self.spec)
        m.load_state_dict(self.state, strict=True)
        return m.eval()


def _clean_state(state: State) -> State:
    # BatchNorm's num_batches_tracked is bookkeeping; keep it so that
    # torchxrayvision-style state dicts round-trip with strict=True.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def to_bytes(spec: ArchSpec, state: State) -> tuple[bytes, Weights]:
    """Serialise to safetensors bytes (deterministic for equal inputs)."""
    state = _clean_state(state)
    w = Weights(spec, state, tensors_digest(state), backbone_digest(state))
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
    return Weights(spec, state, digest, backbone_digest(state))


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
