"""Structured pruning of a DenseNet: channel importance, and which channels to keep for a budget.

Two kinds of channel groups are pruned in every dense layer:

* **bottleneck** channels (conv1 outputs → conv2 inputs). Cheap to remove but
  they cost little compute: removing only these bought the compressed-CheXNet
  release 51 % of the parameters and 2.9 % of the CPU latency.
* **growth** channels (conv2 outputs). Each one is read by every later layer
  of the block and by the transition (or norm5 and the classifier), so
  removing it shrinks the wide 1×1 convolutions that dominate DenseNet121's
  compute. `cxr.channel_slicing.apply_keep` does the bookkeeping.

Importance of each group is measured with a multiplicative *gate* g = 1 on
the group's activation, per image, on labelled data (the calibration split):
G_n = ∂L_n/∂g = Σ_positions (∂L_n/∂a)·a, L_n the masked BCE of image n.

* `fisher`: mean_n G_n² — the diagonal Fisher information of the gate, the
  expected loss increase (to second order) of removing the group (Theis et
  al. 2018, "Faster gaze prediction with dense networks and Fisher pruning").
* `taylor`: (mean_n G_n)² — the squared first-order Taylor estimate of the
  loss change (Molchanov et al. 2019).
* dual intervention (MedCore, Zhang et al.): when a *reference* model of the
  same architecture exists (the version this one was adapted from), a second
  gate measures R_n = Σ (∂L_n/∂a)·(a_ref − a), the first-order effect of
  resetting the group to its reference weights. The score is
  mean G_n² + λ·mean R_n²: a group that became important during adaptation
  (resetting it hurts) is kept even when zeroing it looks cheap.

Selection keeps the top ⌈r·n⌉ groups of each layer by importance, with one
keep ratio r for the whole network (uniform widths keep CPU latency
predictable); `ratio_for_parameters` finds the largest r within a parameter
budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxr.channel_slicing import Keep, apply_keep, fold_norm2, layer_key, layers
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.spec import ArchSpec

State = dict[str, torch.Tensor]
KINDS = ("bottleneck", "growth")


@dataclass(frozen=True)
class Importance:
    """Per dense layer key: importance of each bottleneck and each growth channel (higher = keep)."""

    bottleneck: dict[str, np.ndarray]
    growth: dict[str, np.ndarray]
    method: str
    images: int
    dual: bool = False


def _gated_forward(model: CXRDenseNet, x: torch.Tensor, gates: dict, ref: CXRDenseNet | None) -> torch.Tensor:
    """The model's forward pass with a gate on every bottleneck and growth activation.

    `gates[(kind, key)]` = (zero_gate, reset_gate): zero_gate (N, C, 1, 1) of ones multiplies the
    activation; with `ref`, reset_gate (zeros) multiplies (a_ref − a), a_ref computed from the
    reference layer's weights on the same input.
    """
    f = model.features
    h = f.pool0(f.relu0(f.norm0(f.conv0(x))))
    n_blocks = len(model.spec.block_config)
    for b in range(1, n_blocks + 1):
        block = getattr(f, f"denseblock{b}")
        rblock = getattr(ref.features, f"denseblock{b}") if ref is not None else None
        for i, layer in enumerate(block.children(), start=1):
            key = layer_key(b, i)
            r = F.relu(layer.norm1(h))
            a = F.relu(layer.norm2(layer.conv1(r)))
            zg, rg = gates[("bottleneck", key)]
            if rblock is not None:
                rl = getattr(rblock, f"denselayer{i}")
                a_ref = F.relu(rl.norm2(rl.conv1(r)))
                a = a * zg + (a_ref - a).detach() * rg
            else:
                a = a * zg
            y = layer.conv2(a)
            zg, rg = gates[("growth", key)]
            if rblock is not None:
                y_ref = getattr(rblock, f"denselayer{i}").conv2(a)
                y = y * zg + (y_ref - y).detach() * rg
            else:
                y = y * zg
            h = torch.cat([h, y], 1)
        if b < n_blocks:
            h = getattr(f, f"transition{b}")(h)
    out = F.relu(f.norm5(h))
    return model.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _reference_model(model: CXRDenseNet, reference: State | None, reference_spec: ArchSpec | None,
                     keep: Keep | None) -> CXRDenseNet | None:
    """The reference as a module of the model's exact architecture: norm2 folded where the model's is,
    and the channels lossless compression removed (`keep`) removed from it too. None if that fails."""
    if reference is None or reference_spec is None:
        return None
    try:
        ref_spec, state = fold_norm2(reference_spec, dict(reference), keys=set(model.spec.kept_channels))
        if keep is not None:
            ref_spec, state = apply_keep(ref_spec, state, keep)
        if ref_spec != model.spec:
            return None
        m = build_model(ref_spec)
        m.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError):
        return None
    return m.eval()


def channel_importance(model: CXRDenseNet, images: np.ndarray, labels: np.ndarray, *, method: str = "fisher",
                       reference: State | None = None, reference_spec: ArchSpec | None = None,
                       reference_keep: Keep | None = None, adaptation_weight: float = 1.0, batch_size: int = 64
                       ) -> Importance:
    """Importance of every bottleneck and growth channel on labelled images (see the module docstring).

    Takes the model (BatchNorm in eval mode), images (N, C, R, R) float32, labels (N, P) with NaN
    unknown, the method ("fisher" or "taylor") and optionally the reference (state, spec, and the
    `Keep` that lossless compression applied to the model) for the dual-intervention score; it is
    skipped (`dual` False) when the reference does not map onto the model's channels. Returns
    `Importance`. Raises ValueError for an unknown method or no images.
    """
    if method not in ("fisher", "taylor"):
        raise ValueError(f"unknown importance method {method!r}")
    if len(images) == 0:
        raise ValueError("importance needs at least one image")
    model = model.eval()
    ref = _reference_model(model, reference, reference_spec, reference_keep)
    spec = model.spec
    shapes = {("bottleneck", layer_key(b, i)): spec.bottleneck(b, i) for b, i in layers(spec)}
    shapes |= {("growth", layer_key(b, i)): spec.growth(b, i) for b, i in layers(spec)}
    g_zero = {k: [] for k in shapes}
    g_reset = {k: [] for k in shapes}
    for p in model.parameters():
        p.requires_grad_(False)
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images[s:s + batch_size])
        y = torch.from_numpy(labels[s:s + batch_size])
        n = len(x)
        gates = {k: (torch.ones(n, c, 1, 1, requires_grad=True), torch.zeros(n, c, 1, 1, requires_grad=True))
                 for k, c in shapes.items()}
        z = _gated_forward(model, x, gates, ref)
        known = ~torch.isnan(y)
        loss = F.binary_cross_entropy_with_logits(z[known], y[known], reduction="sum")
        leaves = [t for pair in gates.values() for t in (pair if ref is not None else pair[:1])]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        it = iter(grads)
        for k in shapes:
            g_zero[k].append(next(it).flatten(1).double())
            if ref is not None:
                gr = next(it)
                g_reset[k].append(gr.flatten(1).double() if gr is not None else torch.zeros(n, shapes[k]))
    for p in model.parameters():
        p.requires_grad_(True)

    def score(parts: list[torch.Tensor]) -> np.ndarray:
        g = torch.cat(parts)
        return (g.pow(2).mean(0) if method == "fisher" else g.mean(0).pow(2)).numpy()

    out: dict[str, dict[str, np.ndarray]] = {"bottleneck": {}, "growth": {}}
    for (kind, key) in shapes:
        s = score(g_zero[(kind, key)])
        if ref is not None:
            s = s + adaptation_weight * score(g_reset[(kind, key)])
        out[kind][key] = s
    return Importance(out["bottleneck"], out["growth"], method, len(images), ref is not None)


def select(spec: ArchSpec, importance: Importance, ratio: float, kinds: tuple[str, ...] = KINDS) -> Keep:
    """Keep the ⌈ratio·n⌉ most important channels of each kind in every dense layer (at least one)."""
    keep = Keep()
    for b, i in layers(spec):
        key = layer_key(b, i)
        for kind, store, n in (("bottleneck", keep.bottleneck, spec.bottleneck(b, i)),
                               ("growth", keep.growth, spec.growth(b, i))):
            if kind not in kinds:
                continue
            k = max(1, math.ceil(ratio * n - 1e-9))
            if k >= n:
                continue
            scores = getattr(importance, kind)[key]
            top = np.argsort(-scores, kind="stable")[:k]
            store[key] = np.sort(top)
    return keep


def pruned_spec(spec: ArchSpec, importance: Importance, ratio: float, kinds: tuple[str, ...] = KINDS) -> ArchSpec:
    """The architecture `select` would give (no weights needed; layers in the compressed form)."""
    folded, state = fold_norm2(spec, build_model(spec).state_dict())
    return apply_keep(folded, state, select(folded, importance, ratio, kinds))[0]


def search_ratio(fits: Callable[[float], bool], *, lo: float = 0.02, steps: int = 14) -> float:
    """The largest keep ratio r in [lo, 1] with fits(r) true (fits is monotone: true for small r).

    Returns `lo` when even that does not fit (the caller reports the miss).
    """
    if fits(1.0):
        return 1.0
    a, b = lo, 1.0
    for _ in range(steps):
        mid = (a + b) / 2
        a, b = (mid, b) if fits(mid) else (a, mid)
    return a


def ratio_for_parameters(spec: ArchSpec, importance: Importance, max_parameters: int,
                         kinds: tuple[str, ...] = KINDS) -> float:
    """The largest uniform keep ratio whose pruned model has at most `max_parameters` parameters."""
    def fits(r: float) -> bool:
        return parameter_count(build_model(pruned_spec(spec, importance, r, kinds))) <= max_parameters

    return search_ratio(fits)


@dataclass(frozen=True)
class Pruned:
    """A pruned, reconstructed model and how it was obtained."""

    spec: ArchSpec
    state: State
    ratio: float
    importance: Importance
    compression: dict
    reconstruction_error: dict[str, float]


def prune_and_reconstruct(model: CXRDenseNet, ratio_for: Callable[[ArchSpec, Importance], float], *,
                          importance_images: np.ndarray, importance_labels: np.ndarray,
                          reconstruct_images: np.ndarray, method: str = "fisher",
                          reference: tuple[ArchSpec, State] | None = None, adaptation_weight: float = 1.0,
                          positions: int = 32, ridge: float = 1e-4, seed: int = 0) -> Pruned:
    """Lossless compression, importance, selection at `ratio_for(spec, importance)`, reconstruction.

    Takes the parent model, a function choosing the keep ratio for the (compressed) spec and the
    importance scores (e.g. `ratio_for_parameters` within a budget), labelled images for the
    importance, unlabelled images for the least-squares fits, and optionally the reference
    (spec, state) for the dual-intervention score. Returns `Pruned`; the input model is unchanged.
    """
    from cxr.compress import compress_lossless
    from cxr.reconstruct import reconstruct

    comp = compress_lossless(model)
    folded = build_model(comp.spec)
    folded.load_state_dict(comp.state, strict=True)
    folded.eval()
    ref_spec, ref_state = reference if reference is not None else (None, None)
    imp = channel_importance(folded, importance_images, importance_labels, method=method, reference=ref_state,
                             reference_spec=ref_spec, reference_keep=comp.keep, adaptation_weight=adaptation_weight)
    ratio = ratio_for(comp.spec, imp)
    keep = select(comp.spec, imp, ratio)
    spec, state = apply_keep(comp.spec, comp.state, keep)
    pruned = build_model(spec)
    pruned.load_state_dict(state, strict=True)
    errors = reconstruct(folded, pruned, keep, reconstruct_images, positions=positions, ridge=ridge, seed=seed)
    state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    return Pruned(spec, state, ratio, imp, comp.summary(), errors)
