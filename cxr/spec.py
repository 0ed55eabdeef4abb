"""Architecture spec of a torchxrayvision-style DenseNet.

A model version is this spec + a weights blob + thresholds. The spec is plain
JSON so that the registry can store and diff it without torch. It describes the
full DenseNet121 of torchxrayvision (6,966,034 parameters), the compact
configurations the demo and the tests train on a CPU, and compressed models
whose dense layers keep fewer bottleneck channels (the format of the
compressed-CheXNet release: `conv1` with a bias, `norm2` folded away).

Structured pruning and quantization describe their results by value too:
`growth_channels` (what each dense layer's `conv2` adds to the concatenation),
`transition_channels` (each transition's output width), `dtype` (how the
weights file stores tensors: float32, float16 upcast at load, or int8 inside
an ONNX Runtime graph) and `runtime` (`torch` or `onnxruntime`). These fields
are left out of `to_json()` while at their defaults, so every spec written
before they existed keeps its canonical text and its digest.
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
    #: a name kept for the digests and feature-cache keys it is part of: the resize is scikit-image's
    #: anti-aliased one as torchxrayvision's XRayResizer calls it, not area averaging — the exact recipe is
    #: `cxr.images.preprocessing_recipe`, which the ONNX export writes into the model's metadata
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
    #: Pruned models: channels each dense layer's conv2 adds (default `growth_rate`), same keys.
    growth_channels: dict[str, int] = Field(default_factory=dict)
    #: Pruned models: output width of transition b, keyed "transition{b}" (default: half its input).
    transition_channels: dict[str, int] = Field(default_factory=dict)
    #: Storage of the weights file: float32; float16 (half-size file, upcast to float32 at load);
    #: int8 (static QDQ quantization, runs in ONNX Runtime only).
    dtype: Literal["float32", "float16", "int8"] = "float32"
    runtime: Literal["torch", "onnxruntime"] = "torch"

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
        layer_tables = (("kept_channels", self.kept_channels, self.bn_size * self.growth_rate, "bn_size*growth_rate"),
                        ("growth_channels", self.growth_channels, self.growth_rate, "growth_rate"))
        for table, channels, most, most_txt in layer_tables:
            for key, n in channels.items():
                try:
                    b, i = _parse_layer_key(key)
                except ValueError as exc:
                    raise ValueError(f"{table} key {key!r}: {exc}") from None
                if b > len(self.block_config) or i > self.block_config[b - 1]:
                    raise ValueError(f"{table} key {key!r} names no layer of this network")
                if not 1 <= n <= most:
                    raise ValueError(f"{table}[{key!r}]={n} outside 1..{most_txt}")
        for key, n in self.transition_channels.items():
            b = int(key[len("transition"):]) if key.startswith("transition") and key[10:].isdigit() else 0
            if not 1 <= b < len(self.block_config):
                raise ValueError(f"transition_channels key {key!r} names no transition of this network")
            if n < 1:
                raise ValueError(f"transition_channels[{key!r}]={n} must be at least 1")
        if (self.dtype == "int8") != (self.runtime == "onnxruntime"):
            raise ValueError("int8 weights run in onnxruntime, and onnxruntime versions hold int8 weights")
        return self

    # -- derived values -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.pathologies)

    @property
    def num_features(self) -> int:
        """Width of the pooled feature vector (the classifier's input)."""
        return self.widths()[-1][-1]

    def widths(self) -> list[list[int]]:
        """Per dense block: its input width, then the width after each of its layers (the last is the
        block's output, which the transition halves unless `transition_channels` says otherwise)."""
        out, n = [], self.num_init_features
        for b, layers in enumerate(self.block_config, start=1):
            ws = [n]
            for i in range(1, layers + 1):
                n += self.growth(b, i)
                ws.append(n)
            out.append(ws)
            if b != len(self.block_config):
                n = self.transition_out(b, n)
        return out

    def bottleneck(self, block: int, layer: int) -> int:
        return self.kept_channels.get(f"denseblock{block}.denselayer{layer}", self.bn_size * self.growth_rate)

    def growth(self, block: int, layer: int) -> int:
        """Channels dense layer (block, layer) adds to the concatenation."""
        return self.growth_channels.get(f"denseblock{block}.denselayer{layer}", self.growth_rate)

    def transition_out(self, block: int, in_features: int) -> int:
        """Output width of the transition after dense block `block` (input `in_features` wide)."""
        return self.transition_channels.get(f"transition{block}", in_features // 2)

    def is_compressed_layer(self, block: int, layer: int) -> bool:
        return f"denseblock{block}.denselayer{layer}" in self.kept_channels

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the digest is over this text.

        Fields added after the first release are omitted while at their default, so the text
        (and digest) of every spec that does not use them is what it always was.
        """
        data = self.model_dump(mode="json")
        for name, default in _LATER_FIELDS.items():
            if data.get(name) == default:
                data.pop(name)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

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


#: Fields added after specs were first stored, with the JSON value that means "absent".
_LATER_FIELDS: dict[str, object] = {"growth_channels": {}, "transition_channels": {}, "dtype": "float32",
                                    "runtime": "torch"}


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
