"""Split a DenseNet at a dense block: a frozen prefix and a trainable tail.

F re-optimization retrains one dense block (and what follows it) while the
earlier layers stay frozen. The prefix's output — the block's input — does
not change during that training, so it is computed once per image and cached
(like pooled features for head-level treatments); each epoch then runs only
the tail on small activation maps instead of whole images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet


class Tail(nn.Module):
    """denseblock{b} … norm5 → ReLU → global pool → classifier, sharing the model's modules."""

    def __init__(self, model: CXRDenseNet, block: int) -> None:
        super().__init__()
        names = [n for n, _ in model.features.named_children()]
        key = f"denseblock{block}"
        if key not in names:
            raise InvalidInput(f"the model has no {key}", field="block")
        self.features = nn.Sequential(*[m for n, m in model.features.named_children()][names.index(key):])
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=False)
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def prefix(model: CXRDenseNet, block: int) -> nn.Sequential:
    names = [n for n, _ in model.features.named_children()]
    return nn.Sequential(*[m for n, m in model.features.named_children()][: names.index(f"denseblock{block}")])


def tail_parameter_names(model: CXRDenseNet, block: int) -> list[str]:
    """State-dict names of the tail's tensors (what F re-optimization may change)."""
    names = [n for n, _ in model.features.named_children()]
    keep = (*(f"features.{n}." for n in names[names.index(f"denseblock{block}"):]), "classifier.")
    return [k for k in model.state_dict() if k.startswith(keep)]


@torch.inference_mode()
def block_inputs(model: CXRDenseNet, data: CXRDataset, block: int, batch_size: int = 256) -> np.ndarray:
    """The input of dense block `block` for every image: float32 (N, C, H, W)."""
    model.eval()
    pre = prefix(model, block)
    parts = []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        parts.append(pre(torch.from_numpy(data.images(idx))).numpy())
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
