"""Reading image files the way torchxrayvision does.

8-bit PNG/JPEG → `xrv.utils.normalize` to [-1024, 1024] → center crop →
resize to the model's resolution. 16-bit files are scaled by their bit depth.
Errors name the file: missing → `NotFound`, unreadable → `InvalidInput`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import InvalidInput, NotFound

SUPPORTED = (".png", ".jpg", ".jpeg")


def read_pixels(path: str | Path) -> np.ndarray:
    """Grayscale pixels scaled to [-1024, 1024] (float32, H x W)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("image file does not exist", field=str(p))
    if p.suffix.lower() not in SUPPORTED:
        raise InvalidInput(f"unsupported image type {p.suffix!r} (PNG or JPEG)", field=str(p))
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                maxval = 65535.0 if arr.max() > 255 else 255.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32)
                maxval = 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read image ({exc.__class__.__name__}: {exc})", field=str(p)) from None
    return (2.0 * (arr / maxval) - 1.0) * 1024.0


def center_crop_resize(img: np.ndarray, resolution: int) -> np.ndarray:
    """torchxrayvision's XRayCenterCrop + XRayResizer on one (H, W) image → (1, R, R)."""
    import torchxrayvision as xrv

    x = xrv.datasets.XRayCenterCrop()(img[None])
    if x.shape[-1] != resolution:
        x = xrv.datasets.XRayResizer(resolution, engine="skimage")(x)
    return x.astype(np.float32)


def load_image_file(path: str | Path, resolution: int) -> np.ndarray:
    return center_crop_resize(read_pixels(path), resolution)


def write_folder(ds, out_dir: str | Path) -> Path:
    """Write a data set as PNG files + `labels.csv` (the folder source reads it back).

    Only data sets that hold their pixels (the phantom) can be written.
    """
    import csv

    from PIL import Image

    if ds.pixels is None:
        raise InvalidInput("only in-memory data sets (the phantom) can be written out", field="dataset")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = [n for j, n in enumerate(ds.label_names) if not np.all(np.isnan(ds.labels[:, j]))]
    cols = [ds.label_names.index(n) for n in names]
    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "Patient ID", "View Position", "site", *names])
        for i, iid in enumerate(ds.image_ids):
            rel = f"images/{iid.replace('/', '_')}.png"
            Image.fromarray(ds.pixels[i]).save(out / rel, optimize=False)
            labs = ["" if np.isnan(v) else str(int(v)) for v in ds.labels[i, cols]]
            w.writerow([rel, ds.patient_ids[i], ds.views[i], ds.sites[i], *labs])
    return csv_path
