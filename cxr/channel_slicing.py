"""Channel bookkeeping of a DenseNet's state dict: fold `norm2` into `conv1`, remove channels everywhere.

Lossless compression, structured pruning and reconstruction all change tensor
shapes, and a DenseNet makes that error-prone: a dense layer's new channels
are read by every later layer of its block (`norm1` and `conv1` input slices),
by the transition after the block (or `norm5` and the classifier after the
last one), and a transition's outputs by everything in the next block. This
module is the one place that knows those consumers. It works on (spec, state)
pairs and returns new ones: the spec says by value what was kept
(`kept_channels`, `growth_channels`, `transition_channels`,
`num_init_features`), so the registry can rebuild the model anywhere.

Folding `norm2` (eval-mode BatchNorm, y = s·z + t) into `conv1` gives
`conv1(bias) → relu → conv2`, the compressed-CheXNet release's layer; it is
exact up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cxr.spec import ArchSpec

State = dict[str, torch.Tensor]
_BN = ("weight", "bias", "running_mean", "running_var")


def layer_key(block: int, layer: int) -> str:
    return f"denseblock{block}.denselayer{layer}"


def layer_prefix(block: int, layer: int) -> str:
    return f"features.denseblock{block}.denselayer{layer}."


def layers(spec: ArchSpec) -> list[tuple[int, int]]:
    """Every dense layer as (block, layer), 1-based, in forward order."""
    return [(b, i) for b, n in enumerate(spec.block_config, start=1) for i in range(1, n + 1)]


def bn_affine(state: State, prefix: str, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm at `prefix` as y = s·x + t (float64)."""
    w, b = state[prefix + "weight"].double(), state[prefix + "bias"].double()
    mean, var = state[prefix + "running_mean"].double(), state[prefix + "running_var"].double()
    s = w / torch.sqrt(var + eps)
    return s, b - s * mean


def fold_norm2(spec: ArchSpec, state: State, keys: set[str] | None = None) -> tuple[ArchSpec, State]:
    """Fold `norm2` into `conv1` (weights and bias) of the layers in `keys` (default: all).

    Layers already compressed are left as they are. Returns the new spec (every folded layer
    listed in `kept_channels`) and state; the outputs are unchanged up to float rounding.
    """
    state = dict(state)
    kept = dict(spec.kept_channels)
    for b, i in layers(spec):
        key, p = layer_key(b, i), layer_prefix(b, i)
        if (keys is not None and key not in keys) or spec.is_compressed_layer(b, i):
            continue
        s, t = bn_affine(state, p + "norm2.")
        w = state[p + "conv1.weight"]
        state[p + "conv1.weight"] = (w.double() * s[:, None, None, None]).to(w.dtype)
        state[p + "conv1.bias"] = t.to(w.dtype)
        for suffix in (*_BN, "num_batches_tracked"):
            state.pop(p + "norm2." + suffix, None)
        kept[key] = int(w.shape[0])
    return spec.model_copy(update={"kept_channels": kept}), state


@dataclass
class Keep:
    """Which channels survive, as sorted index arrays into the *current* model's channels.

    `bottleneck[key]`: conv1 outputs of a (compressed) dense layer; `growth[key]`: its conv2
    outputs; `transition[b]`: outputs of transition b; `init`: conv0 outputs. Missing = keep all.
    """

    bottleneck: dict[str, np.ndarray] = field(default_factory=dict)
    growth: dict[str, np.ndarray] = field(default_factory=dict)
    transition: dict[int, np.ndarray] = field(default_factory=dict)
    init: np.ndarray | None = None


def _take(t: torch.Tensor, idx: np.ndarray, dim: int) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long)).contiguous()


def _slice_bn(state: State, prefix: str, idx: np.ndarray) -> None:
    for suffix in _BN:
        if prefix + suffix in state:
            state[prefix + suffix] = _take(state[prefix + suffix], idx, 0)


def concat_index(spec: ArchSpec, block: int, keep: Keep, block_in: np.ndarray) -> list[np.ndarray]:
    """Kept indices (into the current block's concatenation) of what each consumer reads:
    entry i-1 for dense layer i, the last entry for the transition / norm5 after the block."""
    widths = spec.widths()[block - 1]
    cur = list(block_in)
    out = []
    for i in range(1, spec.block_config[block - 1] + 1):
        out.append(np.array(cur, dtype=np.int64))
        g = keep.growth.get(layer_key(block, i), np.arange(spec.growth(block, i)))
        cur += [widths[i - 1] + int(k) for k in g]
    out.append(np.array(cur, dtype=np.int64))
    return out


def apply_keep(spec: ArchSpec, state: State, keep: Keep) -> tuple[ArchSpec, State]:
    """Remove every channel `keep` does not list, with all its downstream slices.

    A dense layer whose bottleneck shrinks must be compressed (fold `norm2` first). Returns the
    new spec and state; the kept channels' values are untouched (reconstruction is separate).
    Raises ValueError for an uncompressed layer with a pruned bottleneck or an empty keep set.
    """
    state = dict(state)
    init = np.arange(spec.num_init_features) if keep.init is None else np.asarray(keep.init)
    if len(init) == 0:
        raise ValueError("cannot remove every conv0 channel")
    state["features.conv0.weight"] = _take(state["features.conv0.weight"], init, 0)
    _slice_bn(state, "features.norm0.", init)
    kept, growth, trans = dict(spec.kept_channels), dict(spec.growth_channels), dict(spec.transition_channels)
    block_in = init
    n_blocks = len(spec.block_config)
    for b, n_layers in enumerate(spec.block_config, start=1):
        reads = concat_index(spec, b, keep, block_in)
        for i in range(1, n_layers + 1):
            key, p = layer_key(b, i), layer_prefix(b, i)
            _slice_bn(state, p + "norm1.", reads[i - 1])
            state[p + "conv1.weight"] = _take(state[p + "conv1.weight"], reads[i - 1], 1)
            if key in keep.bottleneck:
                bk = np.asarray(keep.bottleneck[key])
                if not spec.is_compressed_layer(b, i):
                    raise ValueError(f"{key}: fold norm2 into conv1 before pruning its bottleneck")
                if len(bk) == 0:
                    raise ValueError(f"{key}: cannot remove every bottleneck channel")
                state[p + "conv1.weight"] = _take(state[p + "conv1.weight"], bk, 0)
                state[p + "conv1.bias"] = _take(state[p + "conv1.bias"], bk, 0)
                state[p + "conv2.weight"] = _take(state[p + "conv2.weight"], bk, 1)
                kept[key] = len(bk)
            if key in keep.growth:
                gk = np.asarray(keep.growth[key])
                if len(gk) == 0:
                    raise ValueError(f"{key}: cannot remove every growth channel")
                state[p + "conv2.weight"] = _take(state[p + "conv2.weight"], gk, 0)
                growth[key] = len(gk)
        last = reads[-1]
        if b < n_blocks:
            p = f"features.transition{b}."
            _slice_bn(state, p + "norm.", last)
            w = _take(state[p + "conv.weight"], last, 1)
            tk = np.asarray(keep.transition.get(b, np.arange(w.shape[0])))
            if len(tk) == 0:
                raise ValueError(f"transition{b}: cannot remove every channel")
            state[p + "conv.weight"] = _take(w, tk, 0)
            trans[f"transition{b}"] = len(tk)
            block_in = np.arange(len(tk))
        else:
            _slice_bn(state, "features.norm5.", last)
            state["classifier.weight"] = _take(state["classifier.weight"], last, 1)
    new = spec.model_copy(update={
        "num_init_features": len(init), "kept_channels": kept,
        "growth_channels": {k: v for k, v in growth.items() if v != spec.growth_rate},
    })
    # A transition's width is recorded only where it is not the default (half its new input).
    widths = [ws[-1] for ws in new.model_copy(update={"transition_channels": trans}).widths()]
    trans = {k: v for k, v in trans.items() if v != widths[int(k[len("transition"):]) - 1] // 2}
    new = ArchSpec.from_json(new.model_copy(update={"transition_channels": trans}).model_dump(mode="json"))
    return new, state
