"""A version's reference statistics, computed once from its calibration split and kept in the registry.

`reference_for` gives the `cxr.reference.Reference` of a registered version: from the registry when it
was computed before (its blob verified by sha256 on read), else computed now from the data sets linked
to the version as its CALIBRATION split — pooled features from the feature cache, the version's scores,
the split's labels and model-ready images (read one at a time) — stored as a blob with its registry row
(`repo.add_reference`, audited) and returned. Two processes computing it at once both end with the one
committed first. A version without a calibration split has no reference (`NotFound`, saying so).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cxr.data import CXRDataset
from cxr.errors import NotFound
from cxr.reference import Reference, build_reference, from_bytes, to_bytes
from decision.catalog import Catalog
from registry import blobs, repo
from registry.entities import DatasetRole, VersionEntity
from registry.session import session_scope

log = logging.getLogger(__name__)


class _Images(Sequence):
    """The model-ready images of several data sets, read one at a time (a 224 px split does not fit twice)."""

    def __init__(self, parts: list[CXRDataset]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i):  # type: ignore[override]
        for p in self.parts:
            if i < len(p):
                return p.images([i])[0]
            i -= len(p)
        raise IndexError(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self.parts:
            for start in range(0, len(p), 256):
                yield from p.images(np.arange(start, min(start + 256, len(p))))


def reference_for(catalog: Catalog, url: str | None, version: VersionEntity) -> Reference:
    """The version's reference statistics (see the module docstring). Raises `NotFound` when the version
    has no calibration split, `IntegrityFailure` when its stored blob or data no longer match."""
    with session_scope(url, read_only=True) as s:
        row = repo.get_reference(s, version.id)
        cal = [d for d in repo.list_datasets(s, ids=version.dataset_ids) if d.role == DatasetRole.calibration] \
            if version.dataset_ids else []
    if row is not None:
        return from_bytes(blobs.get_bytes(row.digest, catalog.home))
    if not cal:
        raise NotFound(f"{version.ref} has no calibration split registered: it has no reference statistics, so "
                       "nothing can be judged against what it was validated on", field="version")
    w = catalog.weights(version)
    names = list(w.spec.pathologies)
    data = [catalog.dataset(d) for d in cal]
    ref = build_reference(
        names, np.concatenate([catalog.features(w, d) for d in cal]),
        np.concatenate([catalog.probabilities(w, d) for d in cal]),
        np.concatenate([ds.aligned_labels(names) for ds in data]),
        images=_Images(data), views=[v for ds in data for v in ds.views],
        meta={"datasets": [d.id for d in cal], "version": version.ref})
    payload = to_bytes(ref)
    blob = blobs.put_bytes(payload, Path(catalog.home))
    with session_scope(url) as s:
        repo.record_blob(s, blob)
        stored = repo.add_reference(s, version.id, blob.digest, ref.summary())
    log.info("reference statistics of %s: %d calibration studies, %s", version.ref,
             ref.drift.scores.shape[0], blob.digest[:12])
    if stored.digest != blob.digest:  # another process committed first: use its reference
        return from_bytes(blobs.get_bytes(stored.digest, catalog.home))
    return ref
