"""One interface over the places chest X-rays come from.

`CXRDataset` is what training, feature extraction, evaluation and the monitor
consume: labels (NaN = unknown), image ids, patients, sites, views, and a way
to load images in torchxrayvision's conventions (one channel, [-1024, 1024],
center-cropped, resized to the model's resolution). Three sources build it:

* the phantom (`phantom_dataset`), cached on disk by its config;
* a folder of PNG/JPEG files plus a CSV of labels (`folder_dataset`);
* NIH ChestX-ray14 films in a user's folder, labels from the shipped metadata (`nih_dataset`).

Splits are by patient (`split_by_patient`): no patient lands in two splits.
A data set's digest covers its image ids, labels, provenance and
preprocessing, so the feature cache and the registry can tell data sets apart.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr.errors import InvalidInput
from cxr.files import atomic_write
from cxr.images import list_films, load_image_file
from cxr.phantom import PhantomConfig, generate, to_model_input
from cxr.spec import XRV_PATHOLOGIES, Preprocessing

Loader = Callable[[np.ndarray], np.ndarray]  # row indices -> float32 (B, 1, R, R)


@dataclass(frozen=True)
class CXRDataset:
    name: str
    resolution: int
    label_names: tuple[str, ...]
    labels: np.ndarray  # (N, L) float32, NaN = unknown
    image_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]
    sites: tuple[str, ...]
    views: tuple[str, ...]
    provenance: dict = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    loader: Loader | None = field(default=None, compare=False, repr=False)
    #: phantom only: the uint8 pixels, kept so subsets and caches stay cheap
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.image_ids)

    def images(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Model input for rows `idx`: float32 (B, 1, R, R) in [-1024, 1024]."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.pixels is not None:
            return to_model_input(self.pixels[idx])
        if self.loader is None:
            raise InvalidInput(f"data set {self.name!r} has no images attached", field="dataset")
        return self.loader(idx)

    def aligned_labels(self, pathologies: Sequence[str]) -> np.ndarray:
        """Labels re-ordered to a model's outputs; NaN where this data set has no such label."""
        out = np.full((len(self), len(pathologies)), np.nan, dtype=np.float32)
        pos = {p: j for j, p in enumerate(self.label_names)}
        for k, p in enumerate(pathologies):
            if p in pos:
                out[:, k] = self.labels[:, pos[p]]
        return out

    def digest(self) -> str:
        """sha256 over provenance, preprocessing, resolution, image ids and labels."""
        h = hashlib.sha256()
        head = {
            "provenance": self.provenance,
            "preprocessing": self.preprocessing.key(),
            "resolution": self.resolution,
            "labels": list(self.label_names),
        }
        h.update(json.dumps(head, sort_keys=True).encode())
        lab = np.where(np.isnan(self.labels), -1.0, self.labels).astype(np.float32)
        for i, iid in enumerate(self.image_ids):
            h.update(iid.encode() + b"\t")
            h.update(lab[i].tobytes())
        return h.hexdigest()

    def subset(self, idx: Sequence[int] | np.ndarray, name: str | None = None) -> CXRDataset:
        idx = np.asarray(idx, dtype=np.int64)
        parent_loader = self.loader

        def sub_loader(rows: np.ndarray) -> np.ndarray:
            assert parent_loader is not None
            return parent_loader(idx[rows])

        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return replace(
            self,
            name=name or self.name,
            labels=self.labels[idx],
            image_ids=pick(self.image_ids),
            patient_ids=pick(self.patient_ids),
            sites=pick(self.sites),
            views=pick(self.views),
            loader=sub_loader if parent_loader is not None else None,
            pixels=self.pixels[idx] if self.pixels is not None else None,
        )

    def summary(self) -> dict:
        known = ~np.isnan(self.labels)
        pos = np.nansum(self.labels, axis=0)
        return {
            "name": self.name,
            "n": len(self),
            "digest": self.digest(),
            "resolution": self.resolution,
            "patients": len(set(self.patient_ids)),
            "sites": sorted(set(self.sites)),
            "ap_fraction": round(sum(v == "AP" for v in self.views) / max(len(self), 1), 3),
            "positives": {p: int(pos[j]) for j, p in enumerate(self.label_names) if known[:, j].any()},
        }


# -- phantom ---------------------------------------------------------------


def phantom_dataset(cfg: PhantomConfig, cache_dir: str | Path | None = None, workers: int | None = None) -> CXRDataset:
    """The phantom set for `cfg`, read from `cache_dir` when it was made before."""
    cache = Path(cache_dir) / "phantom" / f"{cfg.key()}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            cols = {k: tuple(str(x) for x in z[k]) for k in ("image_ids", "patient_ids", "views")}
    else:
        d = generate(cfg, workers=workers)
        images, labels = d.images, d.labels
        cols = {"image_ids": tuple(d.image_ids), "patient_ids": tuple(d.patient_ids), "views": tuple(d.views)}
        if cache is not None:
            buf = io.BytesIO()
            np.savez(buf, images=images, labels=labels, **{k: np.array(v) for k, v in cols.items()})
            atomic_write(cache, buf.getvalue())
    prov = {"kind": "phantom", **{k: getattr(cfg, k) for k in ("site", "split", "seed", "missing_sign_rate")}}
    prov["generator"] = "phantom-1"
    return CXRDataset(
        name=f"phantom-{cfg.site}-{cfg.split}",
        resolution=cfg.resolution,
        label_names=XRV_PATHOLOGIES,
        labels=labels,
        image_ids=cols["image_ids"],
        patient_ids=cols["patient_ids"],
        sites=(cfg.site,) * len(labels),
        views=cols["views"],
        provenance=prov,
        pixels=images,
    )


# -- splits ----------------------------------------------------------------


def split_by_patient(
    ds: CXRDataset, fractions: dict[str, float] | None = None, seed: int = 0
) -> dict[str, CXRDataset]:
    """Partition by patient (hash of patient id): train / calibration / evaluation by default."""
    fractions = fractions or {"train": 0.7, "calibration": 0.15, "evaluation": 0.15}
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise InvalidInput("fractions must be non-negative and sum to more than 0", field="fractions")
    names = list(fractions)
    edges = np.cumsum([fractions[n] / total for n in names])
    assign: dict[str, int] = {}
    for pid in set(ds.patient_ids):
        u = int.from_bytes(hashlib.blake2b(f"{seed}|{pid}".encode(), digest_size=8).digest(), "little") / 2**64
        assign[pid] = min(int(np.searchsorted(edges, u, side="right")), len(names) - 1)
    which = np.array([assign[p] for p in ds.patient_ids])
    return {n: ds.subset(np.flatnonzero(which == k), name=f"{ds.name}:{n}") for k, n in enumerate(names)}


# -- files -----------------------------------------------------------------


def _file_loader(paths: Sequence[Path], resolution: int) -> Loader:
    def load(idx: np.ndarray) -> np.ndarray:
        return np.stack([load_image_file(paths[i], resolution) for i in idx])

    return load


def folder_dataset(folder: str | Path, csv_path: str | Path, resolution: int, name: str | None = None) -> CXRDataset:
    """PNG/JPEG files under `folder` with labels in `csv_path` (validated up front).

    The CSV needs an image column (`image`, `path`, `filename` or `Image Index`, relative to
    `folder`) and either pathology columns named as torchxrayvision names them (1 / 0 /
    empty = unknown; -1 = uncertain, read as unknown) or NIH's `Finding Labels` column.
    Optional: `Patient ID`, `View Position`, `site`.
    """
    from cxr.labels_csv import read_label_csv

    table = read_label_csv(Path(folder), Path(csv_path))
    return CXRDataset(
        name=name or Path(folder).name,
        resolution=resolution,
        label_names=table.label_names,
        labels=table.labels,
        image_ids=table.image_ids,
        patient_ids=table.patient_ids,
        sites=table.sites,
        views=table.views,
        provenance={"kind": "folder", "csv": Path(csv_path).name},
        loader=_file_loader(table.paths, resolution),
    )


def films_dataset(folder: str | Path, resolution: int, name: str | None = None) -> CXRDataset:
    """The films (PNG, JPEG or DICOM, by suffix) directly in `folder`, without labels: a window of a site's
    studies for the label-free monitor. Every output is unknown (no label columns). The digest covers each
    file's name, size and modification time, so a film replaced under the same name is another data set."""
    from cxr.dicom import header_info

    paths = list_films(folder)
    ids = tuple(p.name for p in paths)
    files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}
    # DICOM headers say what a study is (Modality, body part, view): the OOD checks read them per study
    dicom = {p.name: info for p in paths if p.suffix.lower() in (".dcm", ".dicom") and (info := header_info(p))}
    views = tuple(dicom.get(i, {}).get("ViewPosition", "") for i in ids)
    return CXRDataset(
        name=name or Path(folder).name, resolution=resolution, label_names=(),
        labels=np.zeros((len(paths), 0), dtype=np.float32), image_ids=ids, patient_ids=ids,
        sites=("",) * len(paths), views=views, provenance={"kind": "films", "files": files, "dicom": dicom},
        loader=_file_loader(paths, resolution),
    )


def nih_dataset(imgpath: str | Path, resolution: int = 224, views: Sequence[str] = ("PA", "AP")) -> CXRDataset:
    """NIH ChestX-ray14 over the films a user's folder holds, labels from the metadata torchxrayvision ships.

    A partial folder is the normal case (a few of NIH's 12 archives): only the metadata rows whose
    film is present are used (`cxr.nih.match_nih_folder` says how many); a folder that matches none
    raises `InvalidInput`. Labels are NIH's 14 in `NIH_PATHOLOGIES` order.
    """
    import logging

    from cxr.nih import load_nih_metadata, match_nih_folder
    from cxr.spec import NIH_PATHOLOGIES

    meta = load_nih_metadata()
    match = match_nih_folder(imgpath, meta, tuple(views))
    logging.getLogger(__name__).info("nih: %s", match.describe())
    rows = match.rows
    return CXRDataset(
        name="nih",
        resolution=resolution,
        label_names=NIH_PATHOLOGIES,
        labels=meta.labels[rows].astype(np.float32),
        image_ids=tuple(str(x) for x in meta.image_index[rows]),
        patient_ids=tuple(str(x) for x in meta.patient_id[rows]),
        sites=("nih",) * len(rows),
        views=tuple("AP" if ap else "PA" for ap in meta.view_ap[rows]),
        provenance={"kind": "nih", "views": list(views)},
        loader=_file_loader(match.paths, resolution),
    )


def concat_datasets(parts: Sequence[CXRDataset], name: str) -> CXRDataset:
    """One data set made of several (same resolution); labels aligned to the first one's names."""
    if not parts:
        raise InvalidInput("nothing to concatenate", field="datasets")
    if len({p.resolution for p in parts}) != 1:
        raise InvalidInput("data sets of different resolutions", field="datasets")
    names = parts[0].label_names
    offsets = np.cumsum([0] + [len(p) for p in parts])
    pixels = np.concatenate([p.pixels for p in parts]) if all(p.pixels is not None for p in parts) else None

    def load(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 1, parts[0].resolution, parts[0].resolution), dtype=np.float32)
        which = np.searchsorted(offsets, idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = parts[k].images(idx[sel] - offsets[k])
        return out

    cat = lambda attr: tuple(x for p in parts for x in getattr(p, attr))  # noqa: E731
    return CXRDataset(
        name=name,
        resolution=parts[0].resolution,
        label_names=names,
        labels=np.concatenate([p.aligned_labels(names) for p in parts]),
        image_ids=cat("image_ids"),
        patient_ids=cat("patient_ids"),
        sites=cat("sites"),
        views=cat("views"),
        provenance={"kind": "concat", "parts": [p.digest() for p in parts]},
        loader=None if pixels is not None else load,
        pixels=pixels,
    )
