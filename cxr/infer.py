"""Batched inference: per-pathology probabilities for data sets and image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxr.data import CXRDataset
from cxr.features import sigmoid
from cxr.images import load_image_file
from cxr.model import CXRDenseNet


@torch.inference_mode()
def predict_logits(model: CXRDenseNet, data: CXRDataset, batch_size: int = 256) -> np.ndarray:
    """Logits (N, outputs) for every image of `data`."""
    model.eval()
    out = np.empty((len(data), model.spec.num_classes), dtype=np.float32)
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        out[idx] = model(torch.from_numpy(data.images(idx))).numpy()
    return out


def predict_probs(model: CXRDenseNet, data: CXRDataset, batch_size: int = 256) -> np.ndarray:
    return sigmoid(predict_logits(model, data, batch_size))


@torch.inference_mode()
def predict_files(
    model: CXRDenseNet, paths: Sequence[str | Path], thresholds: dict[str, float | None] | None = None
) -> list[dict]:
    """Read PNG/JPEG files (torchxrayvision's normalisation) and score them.

    Returns one dict per file: path, and per named output its probability and,
    when a threshold is known, whether it is called positive.
    """
    model.eval()
    res = model.spec.resolution
    x = np.stack([load_image_file(p, res) for p in paths])
    probs = sigmoid(model(torch.from_numpy(x)).numpy())
    thresholds = thresholds or {}
    out = []
    for p, row in zip(paths, probs, strict=True):
        scores = {}
        for j, name in enumerate(model.spec.pathologies):
            if not name:
                continue
            t = thresholds.get(name)
            positive = None if t is None else bool(row[j] >= t)
            scores[name] = {"probability": float(row[j]), "threshold": t, "positive": positive}
        out.append({"path": str(p), "scores": scores})
    return out
