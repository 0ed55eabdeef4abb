"""Architecture spec of a torchxrayvision-style DenseNet.

A model version is this spec + a weights blob + thresholds. The spec is plain
JSON so that the registry can store and diff it without torch. It describes the
full DenseNet121 of torchxrayvision (6,966,034 parameters), the compact
configurations the demo and the tests train on a CPU, and compressed models
whose dense layers keep fewer bottleneck channels (the format of the
compressed-CheXNet release: `conv1` with a bias, `norm2` folded away).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxr.errors import InvalidInput

#: torchxrayvision's default 18 outputs, in its order (`xrv.datasets.default_pathologies`).
XRV_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

#: The 14 labels of NIH ChestX-ray14 (the phantom draws these).
NIH_PATHOLOGIES: tuple[str, ...] = XRV_PATHOLOGIES[:14]


class Preprocessing(BaseModel):
    """How pixels become model input (torchxrayvision's conventions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalization: Literal["xrv-1024"] = "xrv-1024"  # 8-bit [0,255] -> [-1024, 1024]
    crop: Literal["center"] = "center"
    resize: Literal["area"] = "area"

    def key(self) -> str:
        return f"{self.normalization}/{self.crop}/{self.resize}"


class ArchSpec(BaseModel):
    """A torchxrayvision DenseNet, described by value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["xrv-densenet"] = "xrv-densenet"
    growth_rate: int = Field(32, ge=1, le=256)
    block_config: tuple[int, ...] = Field((6, 12, 24, 16), min_length=1, max_length=8)
    num_init_features: int = Field(64, ge=1, le=1024)
    bn_size: int = Field(4, ge=1, le=16)
    in_channels: int = Field(1, ge=1, le=4)
    resolution: int = Field(224, ge=16, le=2048)
    pathologies: tuple[str, ...] = XRV_PATHOLOGIES
    #: Compressed models: bottleneck channels kept per dense layer, keyed
    #: "denseblock{b}.denselayer{i}" (1-based, as in torchxrayvision's names).
    kept_channels: dict[str, int] = Field(default_factory=dict)
    preprocessing: Preprocessing = Preprocessing()

    @field_validator("block_config")
    @classmethod
    def _positive_blocks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in v):
            raise ValueError("every dense block needs at least one layer")
        return v

    @field_validator("pathologies")
    @classmethod
    def _some_outputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a model needs at least one output")
        named = [p for p in v if p]
        if len(set(named)) != len(named):
            raise ValueError("pathology names must be unique")
        return v

    @model_validator(mode="after")
    def _kept_channels_exist(self) -> ArchSpec:
        for key, n in self.kept_channels.items():
            try:
                b, i = _parse_layer_key(key)
            except ValueError as exc:
                raise ValueError(f"kept_channels key {key!r}: {exc}") from None
            if b > len(self.block_config) or i > self.block_config[b - 1]:
                raise ValueError(f"kept_channels key {key!r} names no layer of this network")
            if not 1 <= n <= self.bn_size * self.growth_rate:
                raise ValueError(f"kept_channels[{key!r}]={n} outside 1..bn_size*growth_rate")
        return self

    # -- derived values -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.pathologies)

    @property
    def num_features(self) -> int:
        """Width of the pooled feature vector (the classifier's input)."""
        n = self.num_init_features
        for b, layers in enumerate(self.block_config):
            n += layers * self.growth_rate
            if b != len(self.block_config) - 1:
                n //= 2
        return n

    def bottleneck(self, block: int, layer: int) -> int:
        return self.kept_channels.get(f"denseblock{block}.denselayer{layer}", self.bn_size * self.growth_rate)

    def is_compressed_layer(self, block: int, layer: int) -> bool:
        return f"denseblock{block}.denselayer{layer}" in self.kept_channels

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the digest is over this text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> ArchSpec:
        """Parse a spec; raise `InvalidInput` naming the first bad field."""
        try:
            if isinstance(text, dict):
                return cls.model_validate(text)
            return cls.model_validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "spec"
            raise InvalidInput(err["msg"], field=f"spec.{field}") from None


def _parse_layer_key(key: str) -> tuple[int, int]:
    parts = key.split(".")
    if len(parts) != 2 or not parts[0].startswith("denseblock") or not parts[1].startswith("denselayer"):
        raise ValueError("expected 'denseblock<B>.denselayer<I>'")
    return int(parts[0][len("denseblock"):]), int(parts[1][len("denselayer"):])


PRESETS: dict[str, ArchSpec] = {
    # torchxrayvision densenet121-res224-*: 6,966,034 parameters.
    "densenet121": ArchSpec(),
    # Trains on ~8,000 phantom images in about two minutes on two CPU cores.
    "compact": ArchSpec(growth_rate=12, block_config=(2, 4, 6, 4), num_init_features=24, resolution=64),
    # For unit tests: milliseconds per batch.
    "tiny": ArchSpec(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2, resolution=32),
}


def preset(name: str) -> ArchSpec:
    """Return a named spec (`densenet121`, `compact`, `tiny`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}", field="spec") from None
