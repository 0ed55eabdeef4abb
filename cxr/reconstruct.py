"""Least-squares reconstruction of a pruned DenseNet, layer by layer (ThiNet; He et al. 2017).

After `apply_keep` removes channels, every layer that read them computes
something else. Reconstruction re-fits each convolution, in forward order, so
that its output on real images matches the *unpruned* model's output at the
same place:

    W' = argmin ‖ Y_orig − X_pruned W ‖² + λ‖W‖²

where Y_orig is the original layer's output for the channels that were kept
and X_pruned the pruned network's input to the layer (so errors made earlier
are corrected later, as in He et al.). conv1 (1×1, with bias) and the
transitions' 1×1 convolutions regress on the input channels at sampled
positions; conv2 (3×3, zero-padded) on the 3×3 patches around them; the
classifier regresses the original logits on the pruned pooled features
(the "head fit on cached features"). Normal equations are accumulated over
image chunks (float32 per chunk, float64 across chunks), so memory stays bounded; λ is `ridge` × the mean
diagonal of XᵀX.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from cxr.channel_slicing import Keep, layer_key
from cxr.model import CXRDenseNet

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


class _Normal:
    """Accumulated XᵀX and XᵀY for one least-squares problem."""

    def __init__(self) -> None:
        self.xtx: torch.Tensor | None = None
        self.xty: torch.Tensor | None = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # one chunk's products in float32 (a few thousand rows), accumulated across chunks in float64
        xtx, xty = (x.T @ x).double(), (x.T @ y).double()
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty

    def solve(self, ridge: float) -> torch.Tensor:
        a = self.xtx
        lam = ridge * float(a.diagonal().mean()) + 1e-12
        return torch.linalg.solve(a + lam * torch.eye(len(a), dtype=a.dtype), self.xty)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _points(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) at per-image flat positions pos (N, S) → (N·S, C)."""
    n, c = x.shape[:2]
    flat = x.flatten(2)
    return flat.gather(2, pos[:, None, :].expand(n, c, pos.shape[1])).permute(0, 2, 1).reshape(-1, c)


def _patches(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """3×3 zero-padded patches of (N, C, H, W) at positions pos (N, S) → (N·S, C·9) (conv2 weight order)."""
    cols = F.unfold(x, 3, padding=1)  # (N, C*9, H*W), channel-major like conv weights
    n, d = cols.shape[:2]
    return cols.gather(2, pos[:, None, :].expand(n, d, pos.shape[1])).permute(0, 2, 1).reshape(-1, d)


def _positions(n: int, hw: int, per_image: int, gen: torch.Generator) -> torch.Tensor:
    k = min(per_image, hw)
    return torch.stack([torch.randperm(hw, generator=gen)[:k] for _ in range(n)])


@torch.no_grad()
def reconstruct(original: CXRDenseNet, pruned: CXRDenseNet, keep: Keep, images: np.ndarray, *,
                positions: int = 32, ridge: float = 1e-4, chunk: int = 64, seed: int = 0,
                head: bool = True) -> dict[str, float]:
    """Re-fit `pruned` (in place) to reproduce `original` on `images`; returns relative errors per layer.

    `pruned` must be `original` after `apply_keep(original.spec, original.state_dict(), keep)`
    (both compressed the same way). `images` (N, C, R, R) float32 need no labels; `positions`
    spatial positions per image and layer enter each fit. The returned dict maps a layer name to
    ‖Y − Ŷ‖/‖Y‖ on the fit's own samples after the fit (a diagnostic, not a guarantee).
    """
    original.eval()
    pruned.eval()
    gen = torch.Generator().manual_seed(seed)
    spec = original.spec
    fo, fp = original.features, pruned.features
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    n = len(x)
    stem = lambda f, t: f.pool0(f.relu0(f.norm0(f.conv0(t))))  # noqa: E731
    h0 = torch.cat([stem(fo, x[s]) for s in _chunks(n, chunk)])
    h1 = torch.cat([stem(fp, x[s]) for s in _chunks(n, chunk)])
    errors: dict[str, float] = {}
    n_blocks = len(spec.block_config)
    for b in range(1, n_blocks + 1):
        for i in range(1, spec.block_config[b - 1] + 1):
            key = layer_key(b, i)
            lo_, lp = getattr(getattr(fo, f"denseblock{b}"), f"denselayer{i}"), getattr(
                getattr(fp, f"denseblock{b}"), f"denselayer{i}")
            bk = torch.as_tensor(keep.bottleneck.get(key, np.arange(spec.bottleneck(b, i))))
            gk = torch.as_tensor(keep.growth.get(key, np.arange(spec.growth(b, i))))
            hw = h0.shape[2] * h0.shape[3]
            pos = _positions(n, hw, positions, gen)
            # conv1 (+bias): pruned input r1 → original pre-relu bottleneck a0[bk]
            eq1, a0_parts, y0_parts = _Normal(), [], []
            for s in _chunks(n, chunk):
                a0 = lo_.norm2(lo_.conv1(F.relu(lo_.norm1(h0[s]))))
                a0_parts.append(a0)
                r1 = _points(F.relu(lp.norm1(h1[s])), pos[s])
                eq1.add(torch.cat([r1, torch.ones(len(r1), 1)], 1), _points(a0[:, bk], pos[s]))
            sol = eq1.solve(ridge)
            lp.conv1.weight.copy_(sol[:-1].T.reshape(lp.conv1.weight.shape).float())
            lp.conv1.bias.copy_(sol[-1].float())
            # conv2: pruned relu(conv1) patches → original growth output y0[gk]
            eq2 = _Normal()
            for s, a0 in zip(_chunks(n, chunk), a0_parts, strict=True):
                y0 = lo_.conv2(F.relu(a0))
                y0_parts.append(y0)
                u1 = F.relu(lp.conv1(F.relu(lp.norm1(h1[s]))))
                eq2.add(_patches(u1, pos[s]), _points(y0[:, gk], pos[s]))
            w2 = eq2.solve(ridge)
            lp.conv2.weight.copy_(w2.T.reshape(lp.conv2.weight.shape).float())
            y1 = torch.cat([lp.conv2(F.relu(lp.conv1(F.relu(lp.norm1(h1[s]))))) for s in _chunks(n, chunk)])
            y0 = torch.cat(y0_parts)
            errors[key] = float((y1 - y0[:, gk]).norm() / y0[:, gk].norm().clamp_min(1e-12))
            h0, h1 = torch.cat([h0, y0], 1), torch.cat([h1, y1], 1)
        if b < n_blocks:
            to, tp = getattr(fo, f"transition{b}"), getattr(fp, f"transition{b}")
            tk = torch.as_tensor(keep.transition.get(b, np.arange(to.conv.out_channels)))
            pos = _positions(n, h0.shape[2] * h0.shape[3], positions, gen)
            eq, z0_parts = _Normal(), []
            for s in _chunks(n, chunk):
                z0 = to.conv(F.relu(to.norm(h0[s])))
                z0_parts.append(z0)
                eq.add(_points(F.relu(tp.norm(h1[s])), pos[s]), _points(z0[:, tk], pos[s]))
            wt = eq.solve(ridge)
            tp.conv.weight.copy_(wt.T.reshape(tp.conv.weight.shape).float())
            h0 = to.pool(torch.cat(z0_parts))
            h1 = torch.cat([tp.pool(tp.conv(F.relu(tp.norm(h1[s])))) for s in _chunks(n, chunk)])
    if head:
        pool = lambda f, h: F.adaptive_avg_pool2d(F.relu(f.norm5(h)), 1).flatten(1)  # noqa: E731
        z0 = original.classifier(pool(fo, h0))
        f1 = pool(fp, h1)
        eq = _Normal()
        eq.add(torch.cat([f1, torch.ones(n, 1)], 1), z0)
        sol = eq.solve(ridge)
        pruned.classifier.weight.copy_(sol[:-1].T.float())
        pruned.classifier.bias.copy_(sol[-1].float())
        errors["classifier"] = float((pruned.classifier(f1) - z0).norm() / z0.norm().clamp_min(1e-12))
    log.info("reconstruction: worst relative error %.4f", max(errors.values(), default=0.0))
    return errors
