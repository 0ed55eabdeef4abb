"""Build a torchxrayvision-compatible DenseNet from an `ArchSpec`.

The module tree and state-dict keys are exactly torchxrayvision's
(`features.denseblock1.denselayer1.norm1.weight`, ..., `classifier.weight`), so
its pretrained weights load with `strict=True`. Two differences, on purpose:

* `forward` returns raw logits at the spec's resolution. torchxrayvision
  silently resizes inputs and rescales outputs with `op_norm` (which returns
  exactly 0.5 for a NaN threshold); here thresholds live in the model version,
  not in the network, and the caller resizes explicitly.
* dense layers listed in `spec.kept_channels` are built the way the
  compressed-CheXNet release builds them: `conv1` keeps fewer channels and has
  a bias, `norm2` is folded away (`nn.Identity`).

Pruned models (`spec.growth_channels`, `spec.transition_channels`) keep the
same module names with narrower tensors: a dense layer's `conv2` adds fewer
channels, every later `norm1`/`conv1`, the transitions, `norm5` and the
classifier read the narrower concatenation.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cxr.spec import ArchSpec


class _DenseLayer(nn.Sequential):
    def __init__(self, in_features: int, growth_rate: int, bottleneck: int, compressed: bool) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(in_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(in_features, bottleneck, 1, bias=compressed))
        self.add_module("norm2", nn.Identity() if compressed else nn.BatchNorm2d(bottleneck))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(bottleneck, growth_rate, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], 1)


class _Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_features, out_features, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class CXRDenseNet(nn.Module):
    """DenseNet with torchxrayvision's layout; `forward` gives logits."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        feats: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(spec.in_channels, spec.num_init_features, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(spec.num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(3, stride=2, padding=1),
        )
        n = spec.num_init_features
        for b, layers in enumerate(spec.block_config, start=1):
            block = nn.Sequential()
            for i in range(1, layers + 1):
                block.add_module(
                    f"denselayer{i}",
                    _DenseLayer(n, spec.growth(b, i), spec.bottleneck(b, i), spec.is_compressed_layer(b, i)),
                )
                n += spec.growth(b, i)
            feats[f"denseblock{b}"] = block
            if b != len(spec.block_config):
                out = spec.transition_out(b, n)
                feats[f"transition{b}"] = _Transition(n, out)
                n = out
        feats["norm5"] = nn.BatchNorm2d(n)
        self.features = nn.Sequential(feats)
        self.classifier = nn.Linear(n, spec.num_classes)
        # torchvision's official DenseNet initialisation, as torchxrayvision uses.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input: ReLU + global average pool of the last feature map."""
        out = F.relu(self.features(x), inplace=True)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))


def build_model(spec: ArchSpec, seed: int | None = None) -> CXRDenseNet:
    """Construct the network for `spec`; `seed` makes the initial weights reproducible."""
    if seed is None:
        return CXRDenseNet(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CXRDenseNet(spec)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
