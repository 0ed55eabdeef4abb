"""A version's reference statistics: what it was validated on, so unlabelled windows and single studies
can be judged against it.

Built once per version from its CALIBRATION split (never training data) — the pooled features of its
backbone, its output scores, the split's labels and model-ready images:

* `drift`: every calibration score per named output and a seeded subsample of the pooled features
  (`SAMPLE` rows) for the window tests (`cxr.drift`); the kernel bandwidth is recomputed from them;
* `ood`: the per-study detectors (`cxr.ood.OodReference`: split-conformal Mahalanobis on the pooled
  features and on the image's intensity histogram);
* `maps`: a calibration map per pathology with labels of both classes (`cxr.estimate`), for label-free
  performance estimates;
* `images`: a summary of the films themselves (the mean intensity histogram, the spread of pixel values,
  the views when known) — for people reading a drift report, not for a test.

Stored as one safetensors file (arrays) whose metadata holds the JSON parts, content-addressed in the
blob store by `decision.reference`; `to_bytes` / `from_bytes` round-trip it exactly. Pure: numpy,
scipy, scikit-learn and safetensors' numpy API; no torch, no database.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.drift import DriftReference, drift_reference
from cxr.errors import InvalidInput
from cxr.estimate import CalibrationMap, fit_calibration_map
from cxr.ood import OodReference, pixel_stats

FORMAT = "cxr-decide/reference"
FORMAT_VERSION = 1
#: pooled-feature rows kept for the embedding test: the MMD's cost grows with its square
SAMPLE = 500
#: calibration maps need this many labelled studies of each class (else the pathology is not estimated)
MIN_PER_CLASS = 10


@dataclass(frozen=True)
class Reference:
    """What a version was validated on, as the label-free monitor and `decide predict` read it."""

    pathologies: tuple[str, ...]
    drift: DriftReference
    ood: OodReference
    maps: dict[str, CalibrationMap]
    images: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON summary for the registry row (sizes, which pathologies can be estimated, the sources)."""
        return {"n_calibration": int(self.drift.scores.shape[0]), "feature_sample": int(self.drift.features.shape[0]),
                "features": int(self.drift.features.shape[1]), "ood_tests": self.ood.tests,
                "estimated": sorted(self.maps), "not_estimated": self.meta.get("not_estimated", {}),
                **{k: self.meta[k] for k in ("datasets", "seed") if k in self.meta}}


def build_reference(pathologies: Sequence[str], features: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
                    images: np.ndarray | None = None, views: Sequence[str] | None = None, seed: int = 0,
                    sample: int = SAMPLE, meta: dict[str, Any] | None = None) -> Reference:
    """The reference of a version from its calibration split: `features` (n × F pooled), `scores` (n × P
    probabilities), `labels` (n × P, NaN unknown) aligned to `pathologies` ('' for an unnamed output),
    optionally the model-ready `images` (a sequence of n images, 1 × R × R or R × R; read one at a time, so a
    lazy sequence keeps a large split out of memory) and the films' `views`.
    Raises `InvalidInput` on shapes that do not agree."""
    features, scores, labels = (np.asarray(a, dtype=np.float64) for a in (features, scores, labels))
    n, names = features.shape[0], [str(p or "") for p in pathologies]
    if scores.shape != (n, len(names)) or labels.shape != scores.shape:
        raise InvalidInput(f"features {features.shape}, scores {scores.shape} and labels {labels.shape} must be "
                           f"n rows, scores and labels one column per output ({len(names)})", field="reference")
    rng = np.random.default_rng([seed, 7])
    keep = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    drift = drift_reference(scores, features[keep], [n_ or None for n_ in names])
    stats = None if images is None else [pixel_stats(np.asarray(im).reshape(np.shape(im)[-2:])) for im in images]
    if stats is not None and len(stats) != n:
        raise InvalidInput(f"{len(stats)} images for {n} studies", field="images")
    ood = OodReference.fit(features, stats, seed=seed)
    maps, skipped = {}, {}
    for j, name in enumerate(names):
        if not name:
            continue
        y = labels[:, j]
        pos, neg = int(np.nansum(y == 1)), int(np.nansum(y == 0))
        if min(pos, neg) < MIN_PER_CLASS:
            skipped[name] = f"{pos} positive and {neg} negative labelled studies (at least {MIN_PER_CLASS} each)"
            continue
        maps[name] = fit_calibration_map(scores[:, j], y, seed=seed + j)
    summary_images: dict[str, Any] = {}
    if stats is not None:
        summary_images["histogram"] = np.mean([s.histogram for s in stats], axis=0).round(6).tolist()
        summary_images["spread_quantiles"] = np.percentile([s.spread for s in stats], [5, 50, 95]).round(2).tolist()
    if views is not None:
        summary_images["views"] = dict(Counter(str(v or "unknown") for v in views))
    return Reference(tuple(names), drift, ood, maps, summary_images,
                     {**(meta or {}), "seed": seed, "not_estimated": skipped})


def to_bytes(ref: Reference) -> bytes:
    """One safetensors file: every array under a prefixed name, the JSON parts in its metadata."""
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {"drift.scores": ref.drift.scores, "drift.features": ref.drift.features}
    ood_arrays, ood_meta = ref.ood.to_arrays()
    arrays |= {f"ood.{k}": v for k, v in ood_arrays.items()}
    for name, cmap in ref.maps.items():
        arrays |= {f"maps.{name}.{k}": v for k, v in cmap.to_arrays().items()}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "pathologies": list(ref.pathologies),
            "maps": sorted(ref.maps), "ood": ood_meta, "images": ref.images, "meta": ref.meta}
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"reference": json.dumps(meta)})


def from_bytes(data: bytes) -> Reference:
    """Rebuild a `Reference` from `to_bytes`; `InvalidInput` when it is not one (or of another format version)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(data)
        meta = json.loads(_metadata(data)["reference"])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not a reference file ({exc.__class__.__name__}: {exc})", field="reference") from None
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise InvalidInput(f"reference format {meta.get('format')} v{meta.get('version')} is not "
                           f"{FORMAT} v{FORMAT_VERSION}", field="reference")
    names = meta["pathologies"]
    drift = drift_reference(arrays["drift.scores"], arrays["drift.features"], [n or None for n in names])
    ood = OodReference.from_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("ood.")}, meta["ood"])
    maps = {}
    for name in meta["maps"]:
        prefix = f"maps.{name}."
        maps[name] = CalibrationMap.from_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return Reference(tuple(names), drift, ood, maps, meta.get("images", {}), meta.get("meta", {}))


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's `__metadata__` (its header is 8 bytes of length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}
