"""Explicit import of torchxrayvision checkpoints (the one place that may unpickle).

torchxrayvision's released weight files (`densenet121-res224-all`, ...) are
`torch.save` of a whole `xrv.models.DenseNet`: loading them means unpickling,
which can run arbitrary code. So this import is explicit, logged and behind a
trust flag; it converts once to our safetensors format with a recorded sha256,
and from then on only that file is loaded. It never downloads: the file must
be on disk (a path, or a weights name resolved in torchxrayvision's cache
directory, `~/.torchxrayvision/models_data/`).

Plain state dicts and the compressed-CheXNet checkpoint format
(`{"alive_per_block": ..., "state_dict": ...}`) load with
`torch.load(weights_only=True)` and need no trust flag.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxr.errors import InvalidInput, NotFound
from cxr.spec import XRV_PATHOLOGIES, ArchSpec

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.")


@dataclass(frozen=True)
class ImportedCheckpoint:
    spec: ArchSpec
    state: dict[str, torch.Tensor]
    #: per-pathology operating thresholds; None where unknown or NaN (masked).
    thresholds: dict[str, float | None]
    source_path: str
    source_sha256: str
    unpickled: bool


def xrv_cache_dir() -> Path:
    return Path("~/.torchxrayvision/models_data").expanduser()


def resolve_weights_file(name_or_path: str, cache_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """Map a path, or a torchxrayvision weights name, to a file on disk (never downloads)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p, None
    table = _xrv_model_table()
    if name_or_path in table:
        fname = Path(table[name_or_path]["weights_url"]).name
        folder = Path(cache_dir).expanduser() if cache_dir else xrv_cache_dir()
        cand = folder / fname
        if cand.is_file():
            return cand, name_or_path
        raise NotFound(
            f"torchxrayvision weights {name_or_path!r} are not on disk (looked for {cand}); "
            "nothing is downloaded here: copy the file there or pass its path",
            field="weights",
        )
    raise NotFound(f"no such file or torchxrayvision weights name: {name_or_path}", field="weights")


def _xrv_model_table() -> dict[str, dict[str, Any]]:
    try:
        import torchxrayvision as xrv
    except ImportError:  # pragma: no cover - a runtime dependency
        return {}
    return xrv.models.model_urls


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_checkpoint(
    name_or_path: str,
    *,
    trust_pickle: bool = False,
    weights_name: str | None = None,
    cache_dir: str | Path | None = None,
    resolution: int = 224,
) -> ImportedCheckpoint:
    """Read a torchxrayvision-style checkpoint and describe it as spec + state.

    Raises `InvalidInput` when the file is a pickled object and `trust_pickle`
    is false, or when its tensors do not form a DenseNet.
    """
    path, resolved_name = resolve_weights_file(name_or_path, cache_dir)
    weights_name = weights_name or resolved_name
    digest = _sha256_file(path)
    unpickled = False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if not trust_pickle:
            raise InvalidInput(
                f"{path} is a pickled Python object (sha256 {digest[:16]}…); unpickling can run "
                "arbitrary code, so it is refused unless you trust its source and pass --trust-pickle",
                field="weights",
            ) from exc
        log.warning("unpickling %s (sha256 %s) because the caller trusts it", path, digest)
        obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted, explicit import
        unpickled = True

    op_threshs: list[float] | None = None
    labels: list[str] | None = None
    if isinstance(obj, torch.nn.Module):
        for mod in obj.modules():  # torchxrayvision's own patch for old pickles
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        labels = list(getattr(obj, "targets", None) or getattr(obj, "pathologies", None) or []) or None
        state = dict(obj.state_dict())
    elif isinstance(obj, dict) and "state_dict" in obj:
        state = dict(obj["state_dict"])
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        raise InvalidInput(f"{path} holds a {type(obj).__name__}, not a DenseNet checkpoint", field="weights")

    t = state.pop("op_threshs", None)
    if isinstance(t, torch.Tensor):
        op_threshs = [float(x) for x in t.flatten()]
    table = _xrv_model_table()
    if weights_name and weights_name in table:
        entry = table[weights_name]
        labels = list(entry["labels"])
        op_threshs = [float(x) for x in entry.get("op_threshs", [])] or op_threshs
        resolution = int(entry.get("input_resolution", resolution))

    spec, state = infer_spec(state, labels, resolution)
    thresholds: dict[str, float | None] = {}
    for i, p in enumerate(spec.pathologies):
        if not p:
            continue
        v = op_threshs[i] if op_threshs and i < len(op_threshs) else None
        # torchxrayvision's trap: a NaN threshold makes op_norm return 0.5. Mask it.
        thresholds[p] = None if v is None or math.isnan(v) else v
    return ImportedCheckpoint(spec, state, thresholds, str(path), digest, unpickled)


def infer_spec(
    state: dict[str, torch.Tensor], labels: list[str] | None, resolution: int
) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    """Read growth rate, blocks, bottlenecks and outputs off the tensor shapes."""
    try:
        conv0 = state["features.conv0.weight"]
        cls_w = state["classifier.weight"]
    except KeyError as exc:
        raise InvalidInput(f"missing tensor {exc.args[0]!r}: not a torchxrayvision DenseNet", field="weights") from None
    layers: dict[int, int] = {}
    conv1: dict[tuple[int, int], torch.Tensor] = {}
    growth = None
    for k, v in state.items():
        m = _LAYER.match(k)
        if not m:
            continue
        b, i = int(m.group(1)), int(m.group(2))
        layers[b] = max(layers.get(b, 0), i)
        if k.endswith(".conv1.weight"):
            conv1[(b, i)] = v
        if k.endswith(".conv2.weight"):
            growth = int(v.shape[0])
    if not layers or growth is None:
        raise InvalidInput("no dense layers found: not a torchxrayvision DenseNet", field="weights")
    block_config = tuple(layers[b] for b in sorted(layers))
    full = [
        int(w.shape[0])
        for (b, i), w in conv1.items()
        if f"features.denseblock{b}.denselayer{i}.conv1.bias" not in state
    ]
    bn_size = (max(full) // growth) if full else 4
    kept: dict[str, int] = {}
    state = dict(state)
    for (b, i), w in conv1.items():
        prefix = f"features.denseblock{b}.denselayer{i}."
        if prefix + "conv1.bias" in state:
            kept[f"denseblock{b}.denselayer{i}"] = int(w.shape[0])
            # The compressed release replaces norm2 by Identity after loading.
            for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                state.pop(prefix + "norm2." + suffix, None)
    n_out = int(cls_w.shape[0])
    if labels is None:
        labels = list(XRV_PATHOLOGIES) if n_out == len(XRV_PATHOLOGIES) else [f"output_{j}" for j in range(n_out)]
    if len(labels) != n_out:
        raise InvalidInput(f"{len(labels)} labels for {n_out} classifier outputs", field="labels")
    # Unused outputs are '' in torchxrayvision's tables; keep their slots, unnamed.
    seen: set[str] = set()
    named = []
    for j, p in enumerate(labels):
        named.append(p if p and p not in seen else "" if not p else f"{p}#{j}")
        seen.add(p)
    spec = ArchSpec(
        growth_rate=growth,
        block_config=block_config,
        num_init_features=int(conv0.shape[0]),
        bn_size=bn_size,
        in_channels=int(conv0.shape[1]),
        resolution=resolution,
        pathologies=tuple(named),
        kept_channels=kept,
    )
    return spec, state
