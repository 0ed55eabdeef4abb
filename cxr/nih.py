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

from cxr.errors import InvalidInput, NotFound
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


@dataclass(frozen=True)
class NIHFolder:
    """The films of NIH's metadata that a user's folder holds (most users hold a few of the 12 archives)."""

    folder: Path
    rows: np.ndarray  # metadata row indices of the films found, in metadata order
    paths: tuple[Path, ...]  # one per row
    files_seen: int  # PNG files looked at (some may be no NIH film)
    metadata_rows: int  # rows of the shipped metadata (112,120)

    def describe(self) -> str:
        return (f"{len(self.rows):,} of the metadata's {self.metadata_rows:,} rows matched a film in "
                f"{self.folder} ({self.files_seen:,} PNG files seen)")


def _candidate_dirs(folder: Path) -> list[Path]:
    """Where NIH's films may lie: the folder, its `images/`, and each extracted archive's `images_NNN/images/`."""
    dirs = [folder, folder / "images"]
    dirs += sorted(d / "images" for d in folder.glob("images_*") if d.is_dir())
    dirs += sorted(d for d in folder.glob("images_*") if d.is_dir())
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def match_nih_folder(folder: str | Path, meta: NIHMetadata | None = None,
                     views: tuple[str, ...] = ("PA", "AP")) -> NIHFolder:
    """Find which rows of NIH's metadata have their film in `folder` (and its NIH sub-folders).

    Raises `NotFound` for a missing folder and `InvalidInput` when no film matches a row:
    nothing to read is a user error, not an empty data set.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotFound("NIH image folder does not exist", field=str(root))
    meta = meta or load_nih_metadata()
    found: dict[str, Path] = {}
    for d in _candidate_dirs(root):
        for f in d.iterdir():
            if f.suffix.lower() == ".png" and f.name not in found and f.is_file():
                found[f.name] = f
    want_ap, want_pa = "AP" in views, "PA" in views
    keep = np.array([name in found for name in meta.image_index]) & np.where(meta.view_ap, want_ap, want_pa)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise InvalidInput(
            f"no film of NIH ChestX-ray14's metadata found ({len(found)} PNG files in the folder, its images/ "
            "and images_*/images/; NIH names them like 00000001_000.png)", field=str(root))
    return NIHFolder(root, rows, tuple(found[meta.image_index[r]] for r in rows), len(found), len(meta))
