"""The engine's imaging runtime: registered data sets, version weights, cached features.

The registry knows data sets only as rows (name, role, digest, source); this
module re-opens them from their recorded source, refuses one whose digest no
longer matches, and keeps per-process handles so a pass over many reports
loads each data set and each weights blob once. Features come from the
on-disk cache keyed by (backbone digest, data set digest): head-level
treatments and their evaluations never run an image through a network twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from cxr.data import CXRDataset
from cxr.errors import IntegrityFailure
from cxr.features import FeatureCache, head_logits, sigmoid
from cxr.model import CXRDenseNet
from cxr.quantize import runnable
from cxr.sources import open_recorded
from cxr.weights import Weights
from decision.registration import load_version_weights
from registry import repo
from registry.entities import DatasetEntity, DatasetRole, VersionEntity
from treatments.base import FeatureSplit

log = logging.getLogger(__name__)


def record_dataset(session: Session, ds: CXRDataset, role: DatasetRole | str, source: dict[str, Any]) -> DatasetEntity:
    """Register `ds` (by name, role, digest) with the source dict that re-opens it."""
    sites = sorted(set(ds.sites))
    src = {"name": ds.name, **source}
    if len(sites) == 1 and sites[0]:
        src.setdefault("site", sites[0])
    return repo.get_or_create_dataset(session, ds.name, role, ds.digest(), len(ds), src)


class Catalog:
    """Per-process handles on data sets, weights and features under one DECIDE_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.cache_dir = self.home / "cache"
        self.features_cache = FeatureCache(self.cache_dir / "features")
        self._data: dict[int, CXRDataset] = {}
        self._weights: dict[str, Weights] = {}
        self._models: dict[str, CXRDenseNet] = {}

    # -- data --------------------------------------------------------------
    def dataset(self, d: DatasetEntity) -> CXRDataset:
        """Re-open a registered data set; `IntegrityFailure` if it changed since it was registered."""
        if d.id not in self._data:
            ds = open_recorded(d.source, cache_dir=self.cache_dir)
            digest = ds.digest()
            if digest != d.digest:
                raise IntegrityFailure(
                    f"data set {d.name!r} (id {d.id}) no longer matches its registered digest "
                    f"({d.digest[:12]} recorded, {digest[:12]} now): its images or labels changed"
                )
            self._data[d.id] = ds
        return self._data[d.id]

    def attach(self, d: DatasetEntity, ds: CXRDataset) -> None:
        """Use an already open data set for a registered one (its digest must match)."""
        if ds.digest() != d.digest:
            raise IntegrityFailure(f"data set {d.name!r} does not match registered digest {d.digest[:12]}")
        self._data[d.id] = ds

    # -- weights -----------------------------------------------------------
    def weights(self, v: VersionEntity) -> Weights:
        if v.weights_digest not in self._weights:
            self._weights[v.weights_digest] = load_version_weights(v, self.home)
        return self._weights[v.weights_digest]

    def model(self, w: Weights) -> CXRDenseNet:
        """What computes `w`'s outputs: its torch module, or for an int8 ONNX Runtime version an
        `OrtModel` (same `pooled` / call interface), so features and evaluation run through ORT."""
        if w.weights_sha256 not in self._models:
            self._models[w.weights_sha256] = runnable(w)
        return self._models[w.weights_sha256]

    def remember(self, w: Weights) -> None:
        """Keep weights made in this process (a candidate) so they need not be re-read."""
        self._weights.setdefault(w.weights_sha256, w)

    # -- features ----------------------------------------------------------
    def features(self, w: Weights, d: DatasetEntity) -> np.ndarray:
        ds = self.dataset(d)
        if ds.resolution != w.spec.resolution:
            raise IntegrityFailure(f"data set {d.name!r} is {ds.resolution}px, the model expects {w.spec.resolution}px")
        return self.features_cache.features(lambda: self.model(w), ds, w.backbone_sha256)

    def split(self, w: Weights, datasets: list[DatasetEntity], name: str) -> FeatureSplit | None:
        """Features + labels (aligned to the model's outputs) of several data sets, concatenated."""
        parts = []
        for d in datasets:
            ds = self.dataset(d)
            parts.append(FeatureSplit(d.name, self.features(w, d), ds.aligned_labels(w.spec.pathologies),
                                      ds.image_ids, ds.sites))
        return FeatureSplit.concat(parts, name) if parts else None

    def probabilities(self, w: Weights, d: DatasetEntity, head: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> np.ndarray:
        """Per-output probabilities on `d`; `head` overrides the classifier (head-level candidates)."""
        weight, bias = head if head is not None else head_of(w)
        return sigmoid(head_logits(self.features(w, d), weight, bias))


def head_of(w: Weights) -> tuple[np.ndarray, np.ndarray]:
    return w.state["classifier.weight"].numpy(), w.state["classifier.bias"].numpy()
