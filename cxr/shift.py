"""Where does a site's shift live? Input, feature or output level — and so which block to re-train.

Surgical fine-tuning (Lee et al., ICLR 2023) found that the best block to tune
follows the kind of shift: input-level shifts (contrast curve, noise, blur) are
best undone by the first block, feature-level shifts by the middle blocks,
output-level shifts (label or prevalence changes) by the head. This module
measures where the site's films (the target) differ from the training films
(the reference), at every stage of the network the model would see them:

* ``image``: acquisition statistics of each film (`cxr.site_style.image_stats`: intensity quantiles,
  noise, sharpness, heart and body widths) and ``stem``: per-channel mean and sd of the first block's
  input — both input level — and ``block1``, the first dense block's output, also input level;
* ``block2`` … ``blockN``: per-channel mean and sd of each later dense block's output — feature level;
* ``head``: the model's logits — output level.

**The statistic.** At each stage a classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017): an
L2-regularised logistic regression on the stage's descriptors (standardised, reduced to at most 16
principal components so that stages of different widths are judged alike) learns to tell
reference films from target films with 2-fold cross-fitting; its out-of-fold AUROC says how
separable the two sets are at that stage (0.5: not at all, 1: perfectly). The same test between two
halves of the reference, with the same sample sizes, gives the noise floor. A stage's
``excess = min(1, 2 × max(0, AUROC − AUROC_null))`` is the number compared across stages.

**The rule.** A stage shows a shift when its excess is at least ``max(0.1, 3 sd)``, where sd is the
excess's sampling sd under no shift (Hanley–McNeil with AUROC 0.5, m films per side:
sd(AUROC) = sqrt((2m + 1) / (12 m²)), and the excess's sd is 2√2 times that). With no stage showing
a shift the level is ``none``. Otherwise the shift is located at the *earliest* stage showing one whose
excess is at least half of the largest excess of any stage (a shift travels downstream, so it lives
where it first reaches most of its size): ``image``, ``stem`` or ``block1`` → input level, blocks to
tune ``[1, 2]``; ``blockB`` (B ≥ 2) → feature level, blocks ``[B, B+1]`` (``[B, B−1]`` for the last);
``head`` → output level, no block (head-level treatments). ``strength`` is the located stage's excess.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from cxr.data import CXRDataset
from cxr.model import CXRDenseNet
from cxr.site_style import estimate_site_style, image_stats

__all__ = ["ShiftDiagnosis", "StageShift", "diagnose_for", "diagnose_shift", "locate"]

MIN_EXCESS = 0.1
HALF = 0.5
_MAX_COMPONENTS = 16
_RIDGE = 1.0


@dataclass(frozen=True)
class StageShift:
    """One stage's two-sample test: out-of-fold AUROC vs its split-half null, and the excess."""

    stage: str
    level: str
    dims: int
    auroc: float
    null_auroc: float
    excess: float


@dataclass(frozen=True)
class ShiftDiagnosis:
    """Where the shift lives, which dense blocks to tune (in order of preference), and every stage's numbers."""

    level: str  # "input" | "feature" | "output" | "none"
    blocks: tuple[int, ...]
    strength: float
    located_at: str | None
    stages: tuple[StageShift, ...]
    threshold: float  # the excess a stage needs to show a shift
    n_reference: int
    n_target: int
    reason: str
    #: the site's acquisition relative to the reference (`cxr.site_style.SiteStyle.as_dict()`), from the same films
    style: dict | None = None

    @property
    def levels(self) -> dict[str, float]:
        """The largest excess of each level's stages."""
        out: dict[str, float] = {"input": 0.0, "feature": 0.0, "output": 0.0}
        for s in self.stages:
            out[s.level] = max(out[s.level], s.excess)
        return out

    def as_dict(self) -> dict:
        """Plain JSON-able values (recorded with the decision)."""
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["stages"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in d["stages"]]
        d["strength"] = round(self.strength, 4)
        d["threshold"] = round(self.threshold, 4)
        d["levels"] = {k: round(v, 4) for k, v in self.levels.items()}
        return d


def _stage_level(stage: str) -> str:
    if stage in ("image", "stem", "block1"):
        return "input"
    return "output" if stage == "head" else "feature"


@torch.inference_mode()
def _descriptors(model: CXRDenseNet, data: CXRDataset, idx: np.ndarray, batch_size: int = 256
                 ) -> dict[str, np.ndarray]:
    """Per-film descriptors of every stage (see the module docstring), for rows `idx` of `data`."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {}

    def add(name: str, a: np.ndarray) -> None:
        out.setdefault(name, []).append(a)

    for start in range(0, len(idx), batch_size):
        x = data.images(idx[start:start + batch_size])
        add("image", image_stats(x).matrix())
        h = torch.from_numpy(x)
        for name, module in model.features.named_children():
            h = module(h)
            if name == "pool0" or name.startswith("denseblock"):
                stage = "stem" if name == "pool0" else f"block{name[len('denseblock'):]}"
                add(stage, torch.cat([h.mean((2, 3)), h.std((2, 3), correction=0)], 1).numpy())
        h = nn.functional.relu(h)
        add("head", model.classifier(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)).numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def _logistic(x: np.ndarray, z: np.ndarray, ridge: float, iters: int = 25) -> np.ndarray:
    """Ridge logistic regression by Newton's method; returns weights with the intercept last."""
    a = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(a.shape[1])
    pen = np.full(a.shape[1], ridge)
    pen[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - z) + pen * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _auroc(z: np.ndarray, s: np.ndarray) -> float:
    """Mann–Whitney AUROC of scores `s` for labels `z` (ties count half)."""
    from scipy.stats import rankdata

    r = rankdata(s)
    n1 = int(z.sum())
    n0 = len(z) - n1
    return float((r[z == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def c2st_auroc(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Out-of-fold AUROC of a ridge logistic classifier telling rows of `a` from rows of `b` (2-fold)."""
    x = np.concatenate([a, b])
    z = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    x = np.where(np.isfinite(x), x, 0.0)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(z), dtype=int)
    for cls in (0, 1):  # stratified folds
        where = np.flatnonzero(z == cls)
        fold[where] = rng.permutation(len(where)) % 2
    scores = np.empty(len(z))
    for k in (0, 1):
        tr, te = fold != k, fold == k
        mu, sd = x[tr].mean(0), x[tr].std(0)
        keep = sd > 1e-12
        xs_tr, xs_te = (x[tr][:, keep] - mu[keep]) / sd[keep], (x[te][:, keep] - mu[keep]) / sd[keep]
        if xs_tr.shape[1] == 0:
            scores[te] = 0.0
            continue
        _, _, vt = np.linalg.svd(xs_tr, full_matrices=False)
        comp = vt[:_MAX_COMPONENTS].T
        w = _logistic(xs_tr @ comp, z[tr], _RIDGE)
        scores[te] = (xs_te @ comp) @ w[:-1] + w[-1]
    return _auroc(z, scores)


def excess_threshold(m: int) -> float:
    """The excess a stage needs to show a shift with m films per side (module docstring)."""
    sd_auc = math.sqrt((2 * m + 1) / (12 * m * m))
    return max(MIN_EXCESS, 3 * 2 * math.sqrt(2) * sd_auc)


def locate(stages: list[StageShift] | tuple[StageShift, ...], n_blocks: int, threshold: float
           ) -> tuple[str, tuple[int, ...], float, str | None, str]:
    """The rule (module docstring), pure: (level, blocks, strength, located stage, reason)."""
    shown = [s for s in stages if s.excess >= threshold]
    if not shown:
        top = max(stages, key=lambda s: s.excess) if stages else None
        why = f"no stage separates the site's films from the reference (largest excess {top.excess:.2f} at " \
              f"{top.stage}, needs {threshold:.2f})" if top else "no stages measured"
        return "none", (), 0.0, None, why
    peak = max(s.excess for s in stages)
    at = next(s for s in stages if s in shown and s.excess >= HALF * peak)
    level = at.level
    if level == "input":
        blocks: tuple[int, ...] = tuple(b for b in (1, 2) if b <= n_blocks)
    elif level == "feature":
        b = int(at.stage[len("block"):])
        blocks = (b, b + 1) if b < n_blocks else (b, b - 1)
    else:
        blocks = ()
    why = (f"the shift first reaches half of its largest size ({peak:.2f}) at {at.stage} (excess {at.excess:.2f}, "
           f"threshold {threshold:.2f}): {level} level")
    return level, blocks, at.excess, at.stage, why


def diagnose_shift(model: CXRDenseNet, reference: CXRDataset, target: CXRDataset, *, max_images: int = 600,
                   seed: int = 0) -> ShiftDiagnosis:
    """Diagnose where `target` (the site's films) differs from `reference` (the training films) for `model`.

    Uses m = min(max_images, len(target), len(reference) // 2) films of the target and 2m of the
    reference (m for the test, m for the split-half null), drawn with `seed`; labels are not used.
    The site's estimated acquisition style (up to 400 of the same films per side) comes along.
    Returns a `ShiftDiagnosis` (rule and statistic: module docstring). Raises `ValueError` when
    either set has fewer than 20 films or their resolutions differ.
    """
    if reference.resolution != target.resolution:
        raise ValueError(f"reference films are {reference.resolution}px, target films {target.resolution}px")
    m = min(max_images, len(target), len(reference) // 2)
    if m < 20:
        raise ValueError(f"need at least 20 target films and 40 reference films, got {len(target)} and "
                         f"{len(reference)}")
    rng = np.random.default_rng(seed)
    r_idx = np.sort(rng.permutation(len(reference))[: 2 * m])
    t_idx = np.sort(rng.permutation(len(target))[:m])
    ref = _descriptors(model, reference, r_idx)
    tgt = _descriptors(model, target, t_idx)
    half = rng.permutation(2 * m)
    r_a, r_b = half[:m], half[m:]
    stages = []
    for name in ref:
        auc = c2st_auroc(ref[name][r_a], tgt[name], seed)
        null = c2st_auroc(ref[name][r_a], ref[name][r_b], seed)
        stages.append(StageShift(name, _stage_level(name), int(ref[name].shape[1]), auc, null,
                                 min(1.0, 2.0 * max(0.0, auc - null))))
    threshold = excess_threshold(m)
    level, blocks, strength, at, why = locate(stages, len(model.spec.block_config), threshold)
    style = estimate_site_style(target.images(t_idx[:400]), reference.images(r_idx[r_a][:400])).as_dict()
    return ShiftDiagnosis(level, blocks, strength, at, tuple(stages), threshold, m, m, why, style)


def diagnose_for(model: CXRDenseNet, reference_ds: CXRDataset, site_ds: CXRDataset, *, max_images: int = 600,
                 seed: int = 0) -> dict:
    """The engine's call before a backbone treatment: `diagnose_shift(...).as_dict()` (JSON for the decision)."""
    return diagnose_shift(model, reference_ds, site_ds, max_images=max_images, seed=seed).as_dict()
