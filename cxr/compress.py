"""Lossless compression: remove the bottleneck channels whose value cannot depend on the input.

A dense layer computes conv2(relu(norm2(conv1(relu(norm1(x)))))). A bottleneck
channel c (an output of conv1) whose activation a_c = norm2(conv1(·))_c is
provably the same kind of thing on *every* input the model can receive can be
dealt with exactly:

* **dead** — an upper bound of a_c is ≤ 0, so relu(a_c) = 0 everywhere: the
  channel contributes nothing and is removed from conv1, norm2 and conv2 without
  a trace. This covers BatchNorm affine maps that send everything to a
  non-positive constant (γ = 0, β ≤ 0; or an all-zero conv1 filter) and channels
  dead *by interval bounds*: the bounds come from interval arithmetic through
  the whole network, starting from the preprocessing's pixel range
  [-1024, 1024] (sound; exact where a channel is constant).
* **constant, non-zero** — a_c = k > 0 on every input (e.g. γ = 0, β > 0).
  relu(k) = k feeds the 3×3 *zero-padded* conv2, so its contribution to output
  g is k·Σ W2[g, c] over the taps that land inside the image: uniform inside,
  different on the border rows and columns. It is removed only when that map
  is exactly uniform, i.e. every off-centre tap W2[g, c, ·, ·] is zero; then the
  uniform d_g = k·W2[g, c, 1, 1] is absorbed by every BatchNorm that reads
  output g downstream (`running_mean -= d_g`: the later layers' norm1, the
  transition's norm or norm5), which is exact. Otherwise the channel is
  **kept**: removing it would change the border pixels of the feature map
  (a test shows that naive removal is not lossless).

Then `norm2` is folded into `conv1` (weights and bias) in every layer, giving
the compressed-CheXNet release's layer `conv1(bias) → relu → conv2`
(`alive_per_block`, `norm2 = Identity`), described by the spec's
`kept_channels`. Only float rounding separates the outputs (max |Δlogit| is
measured by the caller on real data and recorded).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.channel_slicing import Keep, apply_keep, fold_norm2, layer_key, layer_prefix, layers
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.spec import ArchSpec

State = dict[str, torch.Tensor]
PIXEL_RANGE = (-1024.0, 1024.0)  # torchxrayvision's normalisation ("xrv-1024")


# -- interval bounds ---------------------------------------------------------------------------
class _Box:
    """An interval tensor as centre and radius (float64)."""

    def __init__(self, mid: torch.Tensor, rad: torch.Tensor) -> None:
        self.mid, self.rad = mid, rad

    @classmethod
    def from_bounds(cls, lo: torch.Tensor, hi: torch.Tensor) -> _Box:
        return cls((lo + hi) / 2, (hi - lo) / 2)

    @property
    def lo(self) -> torch.Tensor:
        return self.mid - self.rad

    @property
    def hi(self) -> torch.Tensor:
        return self.mid + self.rad


def _conv(m: nn.Conv2d, x: _Box) -> _Box:
    kw = {"stride": m.stride, "padding": m.padding}
    return _Box(F.conv2d(x.mid, m.weight, m.bias, **kw), F.conv2d(x.rad, m.weight.abs(), None, **kw))


def _bn(m: nn.Module, x: _Box) -> _Box:
    if isinstance(m, nn.Identity):
        return x
    s = m.weight / torch.sqrt(m.running_var + m.eps)
    t = m.bias - s * m.running_mean
    return _Box(x.mid * s[None, :, None, None] + t[None, :, None, None], x.rad * s.abs()[None, :, None, None])


def _relu(x: _Box) -> _Box:
    return _Box.from_bounds(x.lo.clamp_min(0), x.hi.clamp_min(0))


def _pool(m: nn.Module, x: _Box) -> _Box:
    return _Box.from_bounds(m(x.lo), m(x.hi))  # max and average pooling are monotone


@torch.no_grad()
def bottleneck_bounds(model: CXRDenseNet, pixel_range: tuple[float, float] = PIXEL_RANGE
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sound bounds of every bottleneck activation (after norm2, before relu2) over all inputs.

    Takes the model and the pixel range of its input; returns, per dense layer key, (lo, hi) arrays
    with one entry per bottleneck channel: the minimum and maximum over every position and every
    input image whose pixels lie in the range. Computed in float64 by interval arithmetic.
    """
    m = copy.deepcopy(model).double().eval()
    r, c = m.spec.resolution, m.spec.in_channels
    f = m.features
    x = _Box.from_bounds(torch.full((1, c, r, r), pixel_range[0], dtype=torch.float64),
                         torch.full((1, c, r, r), pixel_range[1], dtype=torch.float64))
    x = _pool(f.pool0, _relu(_bn(f.norm0, _conv(f.conv0, x))))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_blocks = len(m.spec.block_config)
    for b in range(1, n_blocks + 1):
        for i, layer in enumerate(getattr(f, f"denseblock{b}").children(), start=1):
            a = _bn(layer.norm2, _conv(layer.conv1, _relu(_bn(layer.norm1, x))))
            out[layer_key(b, i)] = (a.lo.amin(dim=(0, 2, 3)).numpy(), a.hi.amax(dim=(0, 2, 3)).numpy())
            y = _conv(layer.conv2, _relu(a))
            x = _Box(torch.cat([x.mid, y.mid], 1), torch.cat([x.rad, y.rad], 1))
        if b < n_blocks:
            t = getattr(f, f"transition{b}")
            x = _pool(t.pool, _conv(t.conv, _relu(_bn(t.norm, x))))
    return out


# -- the compression ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFinding:
    """What lossless compression found in one dense layer (bottleneck channel indices)."""

    key: str
    channels: int
    constant_zero: tuple[int, ...]  # constant ≤ 0 (e.g. γ = 0, β ≤ 0): removed
    interval_dead: tuple[int, ...]  # varies, but never above 0: removed
    constant_folded: tuple[int, ...]  # constant > 0 with a centre-only conv2 kernel: absorbed downstream
    constant_kept: tuple[int, ...]  # constant > 0 whose conv2 taps reach the zero-padded border: kept


@dataclass(frozen=True)
class Compression:
    """The compressed model (spec + state) and what was removed."""

    spec: ArchSpec
    state: State
    findings: tuple[LayerFinding, ...]
    parameters_before: int
    parameters_after: int
    removed_per_layer: dict[str, int] = field(default_factory=dict)
    #: the bottleneck channels kept, as indices into the input model's layers (after folding)
    keep: Keep = field(default_factory=Keep)

    @property
    def removed_channels(self) -> int:
        return sum(self.removed_per_layer.values())

    def summary(self) -> dict:
        """JSON-able counts for the run record."""
        tot = lambda attr: sum(len(getattr(f, attr)) for f in self.findings)  # noqa: E731
        return {
            "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
            "parameter_fraction": self.parameters_after / self.parameters_before,
            "removed_channels": self.removed_channels, "constant_zero": tot("constant_zero"),
            "interval_dead": tot("interval_dead"), "constant_folded": tot("constant_folded"),
            "constant_kept": tot("constant_kept"),
            "removed_per_layer": {k: v for k, v in self.removed_per_layer.items() if v},
        }


def _downstream_bns(spec: ArchSpec, block: int, layer: int) -> list[str]:
    """State prefixes of the BatchNorms that read dense layer (block, layer)'s new channels."""
    out = [layer_prefix(block, j) + "norm1." for j in range(layer + 1, spec.block_config[block - 1] + 1)]
    out.append(f"features.transition{block}.norm." if block < len(spec.block_config) else "features.norm5.")
    return out


def find_removable(model: CXRDenseNet, pixel_range: tuple[float, float] = PIXEL_RANGE) -> list[LayerFinding]:
    """Classify every bottleneck channel (see the module docstring) from interval bounds."""
    bounds = bottleneck_bounds(model, pixel_range)
    state = model.state_dict()
    out = []
    for b, i in layers(model.spec):
        key = layer_key(b, i)
        lo, hi = bounds[key]
        w2 = state[layer_prefix(b, i) + "conv2.weight"]
        off_centre = w2.clone()
        off_centre[:, :, 1, 1] = 0
        zero, dead, folded, kept = [], [], [], []
        for c in range(len(lo)):
            if hi[c] <= 0:
                (zero if lo[c] == hi[c] else dead).append(c)
            elif lo[c] == hi[c]:
                (folded if not off_centre[:, c].any() else kept).append(c)
        out.append(LayerFinding(key, len(lo), tuple(zero), tuple(dead), tuple(folded), tuple(kept)))
    return out


def compress_lossless(model: CXRDenseNet, pixel_range: tuple[float, float] = PIXEL_RANGE) -> Compression:
    """Remove every removable bottleneck channel and fold norm2 into conv1 in every dense layer.

    Takes an eval-mode-equivalent model (BatchNorm running statistics are used) and the input pixel
    range; returns the `Compression` (its state loads into `build_model(result.spec)`). The model
    itself is not modified.
    """
    spec = model.spec
    findings = find_removable(model, pixel_range)
    bounds = bottleneck_bounds(model, pixel_range)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keep = Keep()
    removed: dict[str, int] = {}
    for (b, i), fnd in zip(layers(spec), findings, strict=True):
        p = layer_prefix(b, i)
        gone = set(fnd.constant_zero) | set(fnd.interval_dead) | set(fnd.constant_folded)
        if len(gone) == fnd.channels:  # a layer keeps one channel: a dead one if any (it adds 0), else a constant
            gone.discard(min(set(fnd.constant_zero) | set(fnd.interval_dead) or gone))
        folded = sorted(gone & set(fnd.constant_folded))
        if folded:
            w2 = state[p + "conv2.weight"].double()
            k = torch.from_numpy(bounds[fnd.key][1][folded]).double()
            d = (w2[:, folded, 1, 1] * k[None, :]).sum(1)  # the uniform shift of each output channel
            offset = spec.widths()[b - 1][i - 1]
            idx = torch.arange(offset, offset + len(d))
            for bn in _downstream_bns(spec, b, i):
                rm = state[bn + "running_mean"]
                rm[idx] = (rm[idx].double() - d).to(rm.dtype)
        removed[fnd.key] = len(gone)
        if gone:
            keep.bottleneck[fnd.key] = np.array([c for c in range(fnd.channels) if c not in gone], dtype=np.int64)
    spec2, state = fold_norm2(spec, state)
    spec2, state = apply_keep(spec2, state, keep)
    after = parameter_count(build_model(spec2))
    return Compression(spec2, state, tuple(findings), parameter_count(model), after, removed, keep)


@torch.inference_mode()
def max_abs_dlogit(a: nn.Module, b: nn.Module, batches: list[torch.Tensor]) -> float:
    """The largest |logit difference| of two models over some input batches."""
    a.eval()
    b.eval()
    return max((float((a(x) - b(x)).abs().max()) for x in batches), default=0.0)
