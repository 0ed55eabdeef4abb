"""Parse a data-source string from the command line into a `CXRDataset`.

    phantom:SITE              the phantom (site-a, site-b, site-c); --split and --n choose rows
    folder:DIR                PNG/JPEG under DIR, labels in DIR/labels.csv
    folder:DIR:CSV            ... labels in CSV
    nih:DIR                   the NIH ChestX-ray14 films present in DIR (or DIR/images, DIR/images_*/images),
                              labels from the metadata torchxrayvision ships; a partial folder is fine

For non-phantom sources the split is made by patient (`split_by_patient`); split "all" takes every
row of a folder or NIH source (e.g. for label statistics).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cxr.data import CXRDataset, films_dataset, folder_dataset, nih_dataset, phantom_dataset, split_by_patient
from cxr.errors import InvalidInput
from cxr.phantom import SPLITS, PhantomConfig

#: the sources that carry labels (what training and a labelled pass accept)
LABELLED_HELP = "phantom:SITE | folder:DIR[:CSV] | nih:DIR"
HELP = f"{LABELLED_HELP} | films:DIR (no labels: the label-free monitor)"
#: the split name for every row of a folder or NIH source
ALL = "all"


def open_source(
    source: str,
    *,
    resolution: int,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> CXRDataset:
    """Open `source` and return the rows of `split` (at most `n` of them)."""
    kind, _, rest = source.partition(":")
    if kind == "films":  # unlabelled films: one window, never split
        if not rest:
            raise InvalidInput(f"expected {HELP}", field="source")
        ds = films_dataset(rest, resolution)
        return ds.subset(range(min(n, len(ds)))) if n else ds
    if split not in SPLITS and not (split == ALL and kind in ("folder", "nih")):
        extra = f" (or {ALL!r} for folder and nih sources)" if kind != "phantom" else ""
        raise InvalidInput(f"unknown split {split!r}; choose one of {list(SPLITS)}{extra}", field="split")
    if kind == "phantom":
        return phantom_dataset(
            PhantomConfig(site=rest or "site-a", split=split, n=n or 1000, resolution=resolution, seed=seed),
            cache_dir=cache_dir,
        )
    if kind == "folder":
        folder, _, csv = rest.partition(":")
        if not folder:
            raise InvalidInput(f"expected {HELP}", field="source")
        ds = folder_dataset(folder, csv or Path(folder) / "labels.csv", resolution)
    elif kind == "nih":
        if not rest:
            raise InvalidInput(f"expected {HELP}", field="source")
        ds = nih_dataset(rest, resolution)
    else:
        raise InvalidInput(f"unknown source {source!r}; expected {HELP}", field="source")
    fractions = {"train": 0.55, "calibration": 0.15, "evaluation": 0.15, "feedback": 0.15}
    part = ds if split == ALL else split_by_patient(ds, fractions, seed)[split]
    return part.subset(range(min(n, len(part)))) if n else part


def recorded_source(source: str, *, resolution: int, split: str, n: int | None, seed: int = 0) -> dict:
    """The dict `open_recorded` re-opens `open_source(source, …)` from (what the registry stores)."""
    kind, _, rest = source.partition(":")
    if kind == "phantom":
        return {"kind": "phantom", "site": rest or "site-a", "split": split, "n": n or 1000, "resolution": resolution,
                "seed": seed, "missing_sign_rate": PhantomConfig().missing_sign_rate}
    if kind in ("folder", "nih"):
        folder, _, csv = rest.partition(":")
        return {"kind": kind, "folder": str(Path(folder).expanduser().resolve()), "csv": csv or None,
                "split": split, "n": n, "resolution": resolution, "seed": seed}
    if kind == "films":
        return {"kind": "films", "folder": str(Path(rest).expanduser().resolve()), "n": n, "resolution": resolution}
    raise InvalidInput(f"unknown source {source!r}; expected {HELP}", field="source")


def open_recorded(source: dict, cache_dir: str | Path | None = None) -> CXRDataset:
    """Re-open a data set from the `source` dict recorded with it in the registry.

    Keys: kind (phantom | folder | nih | films), resolution, and per kind: phantom — site, split,
    n, seed, missing_sign_rate; folder — folder, csv; nih — folder; films — folder; any kind — split and
    seed for a patient split (non-phantom), and rows [start, stop) for a slice (e.g. one
    week of feedback). The caller compares the digest with the recorded one.
    """
    kind = source.get("kind")
    res = int(source.get("resolution", 224))
    if kind == "phantom":
        cfg = PhantomConfig(
            site=source["site"], split=source["split"], n=int(source["n"]), resolution=res,
            seed=int(source.get("seed", 0)), missing_sign_rate=float(source.get("missing_sign_rate", 0.10)),
        )
        ds = phantom_dataset(cfg, cache_dir=cache_dir)
    elif kind == "films":
        ds = open_source(f"films:{source['folder']}", resolution=res, n=source.get("n"))
    elif kind in ("folder", "nih"):
        spec = f"{kind}:{source['folder']}" + (f":{source['csv']}" if source.get("csv") else "")
        ds = open_source(spec, resolution=res, split=source.get("split", "train"), n=source.get("n"),
                         seed=int(source.get("seed", 0)))
    else:
        raise InvalidInput(f"unknown recorded source kind {kind!r}", field="source.kind")
    rows = source.get("rows")
    if rows:
        start, stop = int(rows[0]), int(rows[1])
        ds = ds.subset(range(start, min(stop, len(ds))), name=source.get("name", ds.name))
    return replace(ds, name=source["name"]) if source.get("name") else ds
