"""Pooled features (the classifier's input) and their on-disk cache.

Head-level treatments (threshold calibration, surgery, head retrain) and their
evaluations never need pixels: the backbone is unchanged, so the 1024-d (or
smaller) pooled features of every image are computed once and reused. The
cache key is (backbone digest, data set digest, preprocessing), so a new
backbone or different data can never hit a stale entry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr.data import CXRDataset
from cxr.files import atomic_write
from cxr.model import CXRDenseNet
from cxr.weights import backbone_digest

log = logging.getLogger(__name__)

BatchProgress = Callable[[int, int], None]


@torch.inference_mode()
def extract_features(
    model: CXRDenseNet, data: CXRDataset, batch_size: int = 256, progress: BatchProgress | None = None
) -> np.ndarray:
    """Pooled features of every image: float32 (N, F)."""
    model.eval()
    out = np.empty((len(data), model.spec.num_features), dtype=np.float32)
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        out[idx] = model.pooled(torch.from_numpy(data.images(idx))).numpy()
        if progress:
            progress(int(idx[-1]) + 1, len(data))
    return out


def head_logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """`classifier(features)` exactly as the module computes it (float32 linear)."""
    with torch.inference_mode():
        return torch.nn.functional.linear(
            torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)),
        ).numpy()


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass
class FeatureCache:
    """Content-addressed feature matrices under `root` (one .npy per key)."""

    root: Path
    hits: int = 0
    misses: int = 0

    @staticmethod
    def key(backbone_sha256: str, data: CXRDataset) -> str:
        text = f"{backbone_sha256}|{data.digest()}|{data.preprocessing.key()}|{data.resolution}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return Path(self.root) / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            log.warning("unreadable feature cache entry %s; recomputing", p)
            return None

    def put(self, key: str, feats: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        atomic_write(self.path(key), buf.getvalue())

    def features(
        self,
        model: CXRDenseNet | Callable[[], CXRDenseNet],
        data: CXRDataset,
        backbone_sha256: str | None = None,
        progress: BatchProgress | None = None,
    ) -> np.ndarray:
        """Features of `data` under `model`'s backbone, from the cache when present.

        `model` may be a factory (with `backbone_sha256` given): it is only called on a miss.
        """
        if backbone_sha256 is None:
            if not isinstance(model, CXRDenseNet):
                raise TypeError("a model factory needs backbone_sha256")
            backbone_sha256 = backbone_digest(model.state_dict())
        key = self.key(backbone_sha256, data)
        got = self.get(key)
        if got is not None and got.shape[0] == len(data):
            self.hits += 1
            return got
        self.misses += 1
        net = model if isinstance(model, CXRDenseNet) else model()
        t = time.perf_counter()
        feats = extract_features(net, data, progress=progress)
        log.info("features of %s (%d images) in %.1fs", data.name, len(data), time.perf_counter() - t)
        self.put(key, feats)
        return feats
