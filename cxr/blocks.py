"""Split a DenseNet at a dense block: a frozen prefix, the block that trains, a frozen rest.

F re-optimization retrains one dense block (surgical fine-tuning, Lee et al.,
ICLR 2023: the block where the shift lives) while the earlier layers stay
frozen. The prefix's output — the block's input — does not change during that
training, so it is computed once per image and cached (like pooled features
for head-level treatments); each epoch then runs only the tail on small
activation maps instead of whole images. `tune_block` is that training loop:
the block (with the transition after it) is the only part in training mode,
so every layer after it keeps its weights *and* its BatchNorm statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet


def _start(model: CXRDenseNet, block: int, stem: bool) -> int:
    """Index among `model.features`' children where the tail begins: denseblock{block}, or conv0 with `stem`."""
    names = [n for n, _ in model.features.named_children()]
    key = f"denseblock{block}"
    if key not in names:
        raise InvalidInput(f"the model has no {key}", field="block")
    if stem and block != 1:
        raise InvalidInput("only the first block can be tuned with the stem", field="block")
    return 0 if stem else names.index(key)


class Tail(nn.Module):
    """denseblock{b} (or, with `stem`, conv0 …) … norm5 → ReLU → global pool → classifier, sharing the modules."""

    def __init__(self, model: CXRDenseNet, block: int, stem: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(*[m for _, m in model.features.named_children()][_start(model, block, stem):])
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=False)
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def prefix(model: CXRDenseNet, block: int, stem: bool = False) -> nn.Sequential:
    """The frozen layers before the tail (empty with `stem`: the tail starts at the pixels)."""
    return nn.Sequential(*[m for _, m in model.features.named_children()][: _start(model, block, stem)])


def tail_parameter_names(model: CXRDenseNet, block: int) -> list[str]:
    """State-dict names of the tail's tensors (what F re-optimization may change)."""
    names = [n for n, _ in model.features.named_children()]
    keep = (*(f"features.{n}." for n in names[names.index(f"denseblock{block}"):]), "classifier.")
    return [k for k in model.state_dict() if k.startswith(keep)]


@torch.inference_mode()
def block_inputs(model: CXRDenseNet, data: CXRDataset, block: int, batch_size: int = 256, stem: bool = False
                 ) -> np.ndarray:
    """The input of dense block `block` (the images themselves with `stem`) for every image: float32 (N, C, H, W)."""
    model.eval()
    pre = prefix(model, block, stem)
    parts = []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        parts.append(pre(torch.from_numpy(data.images(idx))).numpy())
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def block_parameter_names(model: CXRDenseNet, block: int, *, with_head: bool = False, stem: bool = False
                          ) -> list[str]:
    """State-dict names of dense block `block` and the transition after it (what "tuning block b" changes);
    with `stem` (block 1 only), also conv0 and norm0; with `with_head`, also `norm5` and the classifier.
    Raises `InvalidInput` for a block the model lacks."""
    _start(model, block, stem)
    keep = [f"features.denseblock{block}.", f"features.transition{block}."]
    if stem:
        keep += ["features.conv0.", "features.norm0."]
    if with_head:
        keep += ["features.norm5.", "classifier."]
    return [k for k in model.state_dict() if k.startswith(tuple(keep))]


@dataclass(frozen=True)
class Consistency:
    """Paired films for undoing an input-level shift in the tuned block.

    `images(idx)` gives reference (training-site) films as model input; `render(x, rng)` renders them
    the way the report's site would (e.g. `cxr.site_style.site_matched_augment` with the site's
    estimated style). The tuned block is asked to give a rendered film the output the *parent's* block
    gave the original film, and to leave the original's output as it was — so the frozen layers after
    it see what they were trained on, whichever site the film comes from.
    """

    images: Callable[[np.ndarray], np.ndarray]
    n: int
    render: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    weight: float = 1.0
    batch_size: int = 64
    #: epochs (of n films each) on the consistency loss alone before the labelled epochs: undo the site's
    #: acquisition first, then fit the labels
    epochs: int = 0
    lr: float = 3e-3


def _unit(model: CXRDenseNet, block: int, stem: bool = False) -> nn.Sequential:
    """Dense block `block` and the transition after it (the trained unit; from conv0 with `stem`), sharing the
    model's modules."""
    f = model.features
    mods = [f.conv0, f.norm0, f.relu0, f.pool0] if stem else []
    mods.append(getattr(model.features, f"denseblock{block}"))
    if hasattr(model.features, f"transition{block}"):
        mods.append(getattr(model.features, f"transition{block}"))
    return nn.Sequential(*mods)


def tune_block(model: CXRDenseNet, block: int, inputs: np.ndarray, labels: np.ndarray, weights: np.ndarray,
               parent_logits: np.ndarray, target: int, *, distill_rows: np.ndarray | None = None,
               with_head: bool = False, epochs: int = 6, lr: float = 1e-3, batch_size: int = 128,
               distill_weight: float = 1.0, consistency: Consistency | None = None, stem: bool = False,
               seed: int = 0, after_epoch: Callable[[str, int], bool] | None = None) -> list[float]:
    """Train dense block `block` (+ its transition; + the stem with `stem`; + norm5 and the head `with_head`).

    Takes the block's cached inputs (N, C, H, W), labels (N, P) with NaN unknown, per-label loss weights
    (N, P), the parent's logits (N, P) and the target output's index. Loss per batch: weighted masked
    BCE + `distill_weight` × mean squared distance of the *other* outputs to the parent's logits, on
    the rows `distill_rows` marks (default all: rows where the parent is trusted); with `consistency`,
    plus its weight × the squared distance (per channel, in units of the parent's output sd) between
    the unit's output on a site-rendered reference film and the parent unit's output on the original,
    and the same for the original film itself (one reference batch per step) — after
    `consistency.epochs` epochs on that term alone (at `consistency.lr`).
    Only the trained part is in training mode (its BatchNorm layers use batch statistics and update
    their running statistics); every later layer stays in eval mode with its statistics frozen.
    `after_epoch(phase, n)`, when given, is called after every epoch — phase "consistency" or "labelled", `n`
    counting both phases from 1 — and ends the training when it returns True (e.g. `cxr.train.EpochWatch`:
    a time budget, early stopping); it must leave the optimised tensors as they are.
    Returns the mean loss of each epoch run (consistency-only epochs first); the model is left in eval mode.
    """
    trained = set(block_parameter_names(model, block, with_head=with_head, stem=stem))
    unit = _unit(model, block, stem)
    parent_unit = copy.deepcopy(unit).eval() if consistency is not None else None
    pre = prefix(model, block, stem).eval()
    for n, prm in model.named_parameters():
        prm.requires_grad_(n in trained)
    tail = Tail(model, block, stem)
    train_modules = list(unit)
    if with_head:
        train_modules.append(model.features.norm5)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(labels)
    w_all, z_par = torch.from_numpy(weights), torch.from_numpy(parent_logits)
    d_all = torch.ones(len(inputs), dtype=torch.bool) if distill_rows is None else torch.from_numpy(distill_rows)
    others = [k for k in range(labels.shape[1]) if k != target]
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale = _output_scale(consistency, pre, parent_unit, rng) if consistency is not None else None
    losses: list[float] = []
    stop = after_epoch or (lambda phase, n: False)
    try:
        tail.eval()
        for m in train_modules:
            m.train()
        if consistency is not None and consistency.epochs:
            params = [q for q in model.parameters() if q.requires_grad]
            first = torch.optim.AdamW(params, lr=consistency.lr)
            for _ in range(consistency.epochs):
                total = 0.0
                steps = max(1, consistency.n // consistency.batch_size)
                for _ in range(steps):
                    loss = _consistency_loss(consistency, pre, unit, parent_unit, scale, rng)
                    first.zero_grad()
                    loss.backward()
                    first.step()
                    total += float(loss.detach())
                losses.append(total / steps)
                if stop("consistency", len(losses)):
                    return losses
        for _ in range(epochs):
            perm = torch.randperm(len(x_all), generator=gen)
            total = 0.0
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                z = tail(x_all[idx])
                y, w = y_all[idx], w_all[idx]
                known = ~torch.isnan(y)
                bce = F.binary_cross_entropy_with_logits(
                    z[known], y[known], weight=w[known], reduction="sum") / w[known].sum().clamp_min(1.0)
                d = d_all[idx]
                gap = ((z[d][:, others] - z_par[idx][d][:, others]) ** 2).sum() / max(len(others) * len(idx), 1)
                loss = bce + distill_weight * gap
                if consistency is not None:
                    loss = loss + consistency.weight * _consistency_loss(consistency, pre, unit, parent_unit,
                                                                         scale, rng)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(perm))
            if stop("labelled", len(losses)):
                break
    finally:
        model.eval()
        for prm in model.parameters():
            prm.requires_grad_(True)
    return losses


def _output_scale(c: Consistency, pre: nn.Module, parent_unit: nn.Module, rng: np.random.Generator
                  ) -> torch.Tensor:
    """Per-channel sd of the parent unit's output on reference films (the consistency loss's unit)."""
    idx = np.sort(rng.choice(c.n, size=min(c.n, 256), replace=False))
    with torch.no_grad():
        out = parent_unit(pre(torch.from_numpy(c.images(idx))))
    return out.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)


def _consistency_loss(c: Consistency, pre: nn.Module, unit: nn.Module, parent_unit: nn.Module,
                      scale: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    idx = np.sort(rng.choice(c.n, size=min(c.n, c.batch_size), replace=False))
    x = c.images(idx)
    with torch.no_grad():
        clean, styled = pre(torch.from_numpy(x)), pre(torch.from_numpy(c.render(x, rng)))
        goal = parent_unit(clean)
    both = unit(torch.cat([styled, clean]))
    return (((both - torch.cat([goal, goal])) / scale) ** 2).mean()


@torch.inference_mode()
def tail_logits(model: CXRDenseNet, block: int, inputs: np.ndarray, batch_size: int = 512, stem: bool = False
                ) -> np.ndarray:
    """Logits from cached inputs of `block` (images with `stem`; eval mode): float32 (N, outputs)."""
    model.eval()
    tail = Tail(model, block, stem)
    parts = [tail(torch.from_numpy(inputs[i:i + batch_size])).numpy() for i in range(0, len(inputs), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.spec.num_classes), np.float32)
