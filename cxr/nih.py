"""The NIH ChestX-ray14 metadata that ships inside the torchxrayvision wheel.

`Data_Entry_2017_v2020.csv.gz` (112,120 rows: labels, patient, age, sex, view)
and `BBox_List_2017.csv.gz` (984 expert boxes for 8 pathologies). The phantom
draws every image's labels and demographics from a real row, so prevalence and
co-occurrence are NIH's own; lesion boxes come from the real box list.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import NotFound
from cxr.spec import NIH_PATHOLOGIES

#: BBox_List spells Infiltration "Infiltrate".
_BBOX_ALIASES = {"Infiltrate": "Infiltration"}


def xrv_data_dir() -> Path:
    """torchxrayvision's data folder, found without importing the package (a 4 s import)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("torchxrayvision is not installed", field="torchxrayvision")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@dataclass(frozen=True)
class NIHMetadata:
    image_index: np.ndarray  # (N,) str
    patient_id: np.ndarray  # (N,) int
    age: np.ndarray  # (N,) int (years, clipped to 1..100)
    male: np.ndarray  # (N,) bool
    view_ap: np.ndarray  # (N,) bool (True = AP, False = PA)
    labels: np.ndarray  # (N, 14) uint8 in NIH_PATHOLOGIES order
    #: pathology -> (M, 4) float32 boxes (x, y, w, h) normalised to [0, 1]
    boxes: dict[str, np.ndarray]
    #: image index -> list of (pathology, box) for images that have boxes
    boxes_by_image: dict[str, list[tuple[str, np.ndarray]]]

    def __len__(self) -> int:
        return len(self.image_index)


@functools.lru_cache(maxsize=2)
def load_nih_metadata(data_dir: str | None = None) -> NIHMetadata:
    """Parse the shipped CSVs (about a second; cached per process)."""
    d = Path(data_dir) if data_dir else xrv_data_dir()
    entry, bbox = d / "Data_Entry_2017_v2020.csv.gz", d / "BBox_List_2017.csv.gz"
    for f in (entry, bbox):
        if not f.is_file():
            raise NotFound("NIH metadata missing from the torchxrayvision install", field=str(f))
    df = pd.read_csv(entry)
    sex_col = "Patient Gender" if "Patient Gender" in df.columns else "Patient Sex"
    findings = df["Finding Labels"].astype(str)
    labels = np.zeros((len(df), len(NIH_PATHOLOGIES)), dtype=np.uint8)
    for j, p in enumerate(NIH_PATHOLOGIES):  # no label name is a substring of another
        labels[:, j] = findings.str.contains(p, regex=False).to_numpy(dtype=np.uint8)

    bb = pd.read_csv(bbox, names=["img", "label", "x", "y", "w", "h", "_1", "_2", "_3"], skiprows=1)
    bb["label"] = bb["label"].replace(_BBOX_ALIASES)
    # Boxes are in the 1024 x 1024 pixel space of the released images.
    xywh = (bb[["x", "y", "w", "h"]].to_numpy(dtype=np.float32) / 1024.0).clip(0.0, 1.0)
    boxes: dict[str, np.ndarray] = {}
    by_image: dict[str, list[tuple[str, np.ndarray]]] = {}
    for lab, img, box in zip(bb["label"], bb["img"], xywh, strict=True):
        by_image.setdefault(img, []).append((lab, box))
    for lab in bb["label"].unique():
        boxes[lab] = xywh[(bb["label"] == lab).to_numpy()]
    return NIHMetadata(
        image_index=df["Image Index"].to_numpy(dtype=str),
        patient_id=df["Patient ID"].to_numpy(dtype=np.int64),
        age=df["Patient Age"].clip(1, 100).to_numpy(dtype=np.int64),
        male=(df[sex_col] == "M").to_numpy(),
        view_ap=(df["View Position"] == "AP").to_numpy(),
        labels=labels,
        boxes=boxes,
        boxes_by_image=by_image,
    )
