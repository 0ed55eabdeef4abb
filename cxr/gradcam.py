"""Grad-CAM (Selvaraju et al., 2017): where in the film a pathology's logit comes from.

For the DenseNet's last feature map the answer is exact and cheap: the head is
linear on the global average pool of ReLU(features), so the gradient of logit c
with respect to activation A_k(i, j) is w_ck / (H·W) everywhere, the Grad-CAM
channel weights are the classifier row, and the map is CAM (Zhou et al., 2016).
Its spatial mean before the final ReLU equals the logit minus the bias — a
property the tests check. Any other module (e.g. `features.denseblock3`) goes
through autograd with forward/backward hooks.

Maps come back at the input resolution (bilinear), scaled to [0, 1] per image
(a map that is zero everywhere stays zero). Operators use them to look at the
worst false positives a report names; `decide explain` writes them as PNG overlays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet

LAST = "features"  # the last feature map (before the pooled ReLU): exact CAM


@dataclass(frozen=True)
class Explanation:
    """Per image: the scaled map (H × W, input resolution), the raw map's mean and the logit it explains."""

    pathology: str
    layer: str
    maps: np.ndarray  # (N, H, W) in [0, 1]
    raw_mean: np.ndarray  # (N,) spatial mean of the un-rectified, un-scaled map at the layer's resolution
    logits: np.ndarray  # (N,)


def _pathology_index(model: CXRDenseNet, pathology: str) -> int:
    names = list(model.spec.pathologies)
    if pathology not in names or not pathology:
        known = ", ".join(n for n in names if n)
        raise InvalidInput(f"unknown pathology {pathology!r} (this model has: {known})", field="pathology")
    return names.index(pathology)


def _module(model: CXRDenseNet, layer: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise InvalidInput(f"no module {layer!r} in the model (e.g. features, features.denseblock3)", field="layer")
    return modules[layer]


def auto_layer(model: CXRDenseNet, min_side: int = 7) -> str:
    """The deepest feature map at least `min_side` pixels wide at the model's resolution.

    DenseNet121 at 224 px: `features` (7 × 7, exact CAM). A compact model at 64 px
    ends at 2 × 2, too coarse to show anything, so its maps come from an earlier
    block (e.g. `features.denseblock2`, 8 × 8).
    """
    sides: list[tuple[str, int]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: sides.append((n, out.shape[-1])))
             for name, m in model.features.named_children()]
    was_training = model.training
    model.eval()  # no batch-norm statistics move
    try:
        with torch.no_grad():
            r = model.spec.resolution
            model.features(torch.zeros(1, model.spec.in_channels, r, r))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if sides and sides[-1][1] >= min_side:
        return LAST
    deep = [n for n, side in sides if side >= min_side]
    return f"features.{deep[-1]}" if deep else LAST


def grad_cam(model: CXRDenseNet, images: np.ndarray | torch.Tensor, pathology: str, *,
             layer: str = LAST) -> Explanation:
    """Grad-CAM maps of `pathology` for a batch of images shaped (N, 1, H, W) in torchxrayvision's range.

    `layer`: a module name, `features` (the last map, exact CAM) or `auto` (see `auto_layer`).
    """
    j = _pathology_index(model, pathology)
    layer = auto_layer(model) if layer == "auto" else layer
    target = _module(model, layer)
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != model.spec.in_channels:
        raise InvalidInput(f"expected images shaped (N, {model.spec.in_channels}, H, W), got {tuple(x.shape)}",
                           field="images")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if layer == LAST:  # the rectified last map, exactly what the pool and the head see
                a = F.relu(model.features(x))
                a.retain_grad()
                logits = model.classifier(F.adaptive_avg_pool2d(a, 1).flatten(1))[:, j]
            else:
                a, logits = _hooked(model, target, x, j)
            logits.sum().backward()  # images are independent: one backward gives each image its gradient
        act, grad = a.detach(), a.grad
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # α_k: the spatially averaged gradient
    # Scaled by h·w so that, at the last layer, the map's spatial mean is the logit minus the bias.
    raw = (alpha * act).sum(dim=1) * (act.shape[2] * act.shape[3])
    cam = F.relu(raw).unsqueeze(1)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    maps = (cam / peak).clamp(0, 1).numpy()
    return Explanation(pathology, layer, maps, raw.mean(dim=(1, 2)).numpy(), logits.detach().numpy())


def _hooked(model: CXRDenseNet, target: torch.nn.Module, x: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model keeping `target`'s output (and, after backward, its gradient)."""
    kept: list[torch.Tensor] = []

    def keep(_m: torch.nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        out.retain_grad()
        kept.append(out)
        return out.clone()  # later modules ReLU in place: they get a copy, ours stays as it was

    handle = target.register_forward_hook(keep)
    try:
        logits = model(x)[:, j]
    finally:
        handle.remove()
    return kept[-1], logits


def draw_overlay(ax: Any, image: np.ndarray, heat: np.ndarray, *, title: str = "", alpha: float = 0.4) -> None:
    """On a matplotlib axis: the film in grey, the map in colour on top, no ticks."""
    ax.imshow(np.asarray(image).squeeze(), cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def save_overlay(image: np.ndarray, heat: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """`draw_overlay` as a PNG file (a bare matplotlib Figure: no pyplot state, no display)."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(4, 4), dpi=100)
    draw_overlay(fig.subplots(), image, heat, title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
