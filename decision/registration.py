"""Turn a safetensors weights file (trained, imported or produced by a treatment) into a registry version.

This is the one place that knows both sides: it reads and verifies the file
with `cxr.weights` (the registry may not import torch-level code), computes
what the registry stores about it (spec JSON, digests, per-tensor digests for
`decide diff`, parameter count), puts the bytes in the content-addressed blob
store, and registers the version in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from cxr.footprint import static_footprint
from cxr.model import build_model, parameter_count
from cxr.weights import Weights, from_bytes
from registry import blobs, repo
from registry.entities import PRODUCTION, VersionEntity

log = logging.getLogger(__name__)


def tensor_digests(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each tensor (dtype, shape, bytes), so a diff can name the tensors that changed."""
    out = {}
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def load_thresholds(path: str | Path) -> dict[str, float | None]:
    """A JSON object pathology → threshold (null where unknown)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such thresholds file", field=str(p))
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not JSON ({exc})", field=str(p)) from None
    if not isinstance(data, dict):
        raise InvalidInput("expected an object pathology → threshold", field=str(p))
    out: dict[str, float | None] = {}
    for k, v in data.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise InvalidInput(f"expected a finite number or null, got {v!r}", field=f"thresholds.{k}")
        out[str(k)] = None if v is None else float(v)
    return out


def _default_thresholds(path: Path | None, parent: VersionEntity | None, pathologies: Sequence[str]
                        ) -> dict[str, float | None]:
    sibling = path.with_suffix(".thresholds.json") if path is not None else None
    if sibling is not None and sibling.is_file():  # written next to the weights by `decide import-weights`
        log.info("using thresholds from %s", sibling)
        return load_thresholds(sibling)
    if parent is not None:
        return {p: t for p, t in parent.thresholds.items() if p in pathologies}
    return {}


def register_weights_bytes(
    session: Session,
    data: bytes,
    model: str,
    *,
    source: str = "<bytes>",
    path: Path | None = None,
    parent: str | int | None = None,
    thresholds: Mapping[str, float | None] | None = None,
    promote: bool = False,
    reason: str = "",
    trainable_parameters: int | None = None,
    decision_id: int | None = None,
    treatment_run_id: int | None = None,
    dataset_ids: Sequence[int] = (),
    evaluations: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    notes: str = "",
    actor: str | None = None,
    home: Path | None = None,
    footprint: Mapping[str, Any] | None = None,
    site_thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
) -> VersionEntity:
    """Verify weights bytes, store them as a blob, and register a version (candidate, or production).

    `parent` is a version ref (`NAME:N`, `NAME@alias`, `N`) or id. Thresholds default to
    the file's `.thresholds.json` sibling, else the parent's. The version's footprint is what the
    file shows (parameters, bytes, dtype, runtime) plus what `footprint` adds (e.g. measured
    latency with the CPU flags). `site_thresholds`: per-site overrides (a site group's operating points).
    Raises `InvalidInput` / `IntegrityFailure` for a bad or modified file.
    """
    w: Weights = from_bytes(data, source=source)
    parent_entity = None
    if parent is not None:
        parent_entity = (repo.get_version(session, parent) if isinstance(parent, int)
                         else repo.resolve_version(session, parent))
    pathologies = [p for p in w.spec.pathologies if p]
    thr = dict(thresholds) if thresholds is not None else _default_thresholds(path, parent_entity, pathologies)
    blob = blobs.put_bytes(data, home)
    version = repo.register_version(
        session, model,
        spec_json=w.spec.to_json(), weights_digest=blob.digest, blob=blob, backbone_digest=w.backbone_sha256,
        tensors_digest=w.weights_sha256, tensor_digests=tensor_digests(w.state), pathologies=pathologies,
        parameter_count=parameter_count(build_model(w.spec)), thresholds=thr,
        footprint={**static_footprint(w, len(data)), **dict(footprint or {})},
        parent_id=parent_entity.id if parent_entity is not None else None,
        trainable_parameters=trainable_parameters, decision_id=decision_id, treatment_run_id=treatment_run_id,
        dataset_ids=dataset_ids, evaluations=evaluations, notes=notes, actor=actor, reason=reason,
        site_thresholds=site_thresholds,
    )
    if promote:
        why = reason or "registered with --promote"
        repo.set_alias(session, model, PRODUCTION, version.id, actor=actor, reason=why)
        version = repo.get_version(session, version.id)
    return version


def register_weights_file(session: Session, path: str | Path, model: str, **kwargs: Any) -> VersionEntity:
    """`register_weights_bytes` for a file on disk (see there for the options)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such weights file", field=str(p))
    return register_weights_bytes(session, p.read_bytes(), model, source=str(p), path=p, **kwargs)


def load_version_weights(version: VersionEntity, home: Path | None = None) -> Weights:
    """The weights of a registered version, verified twice: blob sha256, then tensor digests."""
    return from_bytes(blobs.get_bytes(version.weights_digest, home), source=version.ref)
