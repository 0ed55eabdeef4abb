"""Validation of a user's label CSV (folder + CSV data source).

All problems are found before any image is read, each reported with the CSV
line number and the column, so a user fixes the file once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import InvalidInput, NotFound
from cxr.spec import NIH_PATHOLOGIES, XRV_PATHOLOGIES

IMAGE_COLUMNS = ("image", "path", "filename", "Image Index")
PATIENT_COLUMNS = ("Patient ID", "patient_id", "patient")
VIEW_COLUMNS = ("View Position", "view")
SITE_COLUMNS = ("site",)
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}
_UNKNOWN = {"", "nan", "-1", "-1.0", "uncertain"}


@dataclass(frozen=True)
class LabelTable:
    paths: tuple[Path, ...]
    image_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    views: tuple[str, ...]
    sites: tuple[str, ...]
    label_names: tuple[str, ...]
    labels: np.ndarray


def _first(cols: list[str], options: tuple[str, ...]) -> str | None:
    return next((c for c in options if c in cols), None)


def read_label_csv(folder: Path, csv_path: Path) -> LabelTable:
    if not folder.is_dir():
        raise NotFound("image folder does not exist", field=str(folder))
    if not csv_path.is_file():
        raise NotFound("label CSV does not exist", field=str(csv_path))
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            cols = list(rows[0].keys()) if rows else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"not a readable CSV ({exc})", field=str(csv_path)) from None
    if not rows:
        raise InvalidInput("the CSV has no rows", field=str(csv_path))
    img_col = _first(cols, IMAGE_COLUMNS)
    if img_col is None:
        raise InvalidInput(f"needs an image column, one of {list(IMAGE_COLUMNS)}; found {cols}", field="csv.columns")
    names = tuple(p for p in XRV_PATHOLOGIES if p in cols)
    finding = "Finding Labels" in cols
    if not names and not finding:
        raise InvalidInput(
            "no label columns: name them as torchxrayvision does (e.g. 'Cardiomegaly') "
            "or give NIH's 'Finding Labels'",
            field="csv.columns",
        )
    if not names:
        names = NIH_PATHOLOGIES
    pcol, vcol, scol = _first(cols, PATIENT_COLUMNS), _first(cols, VIEW_COLUMNS), _first(cols, SITE_COLUMNS)
    root = folder.resolve()
    paths, ids, pids, views, sites = [], [], [], [], []
    labels = np.full((len(rows), len(names)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        line = i + 2  # the header is line 1
        rel = (row.get(img_col) or "").strip()
        if not rel:
            raise InvalidInput("empty image path", field=f"{csv_path.name}:{line}:{img_col}")
        p = (folder / rel).resolve()
        if root not in p.parents:
            raise InvalidInput(f"image path {rel!r} escapes the image folder", field=f"{csv_path.name}:{line}")
        if not p.is_file():
            raise NotFound(f"image {rel!r} does not exist", field=f"{csv_path.name}:{line}:{img_col}")
        paths.append(p)
        ids.append(rel)
        pids.append((row.get(pcol) or rel) if pcol else rel)
        views.append((row.get(vcol) or "").strip().upper() if vcol else "")
        sites.append((row.get(scol) or "").strip() if scol else "")
        if finding and not any(n in cols for n in XRV_PATHOLOGIES):
            found = set((row.get("Finding Labels") or "").split("|"))
            labels[i] = [1.0 if n in found else 0.0 for n in names]
            continue
        for j, n in enumerate(names):
            v = (row.get(n) or "").strip().lower()
            if v in _TRUE:
                labels[i, j] = 1.0
            elif v in _FALSE:
                labels[i, j] = 0.0
            elif v not in _UNKNOWN:
                raise InvalidInput(f"label value {v!r} is not 1, 0 or empty", field=f"{csv_path.name}:{line}:{n}")
    return LabelTable(tuple(paths), tuple(ids), tuple(pids), tuple(views), tuple(sites), names, labels)
