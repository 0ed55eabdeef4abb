"""Reading real films the way torchxrayvision does, and refusing what is not one.

What comes in from hospitals: 8-bit and 16-bit greyscale PNG, RGB/RGBA PNG (NIH published some
of its 1024² films as RGBA), JPEG of any size (EXIF orientation applied), and DICOM (see
`cxr/dicom.py`: modality LUT → VOI LUT/window → MONOCHROME1 inversion). The type is recognised by
the file's content, not its name (PACS exports often have no suffix). Every film becomes grey
intensities in [0, 1], then torchxrayvision's [-1024, 1024] (`xrv.utils.normalize`: 8-bit / 255,
16-bit / 65535), then its center crop and resize to the model's resolution.

Refused with `InvalidInput` naming the file (exit 2): an empty file, a file that is no image
(text, a truncated or corrupt PNG/JPEG), and absurd shapes — a side under `MIN_SIDE` pixels, over
`MAX_SIDE`, or an aspect ratio over `MAX_ASPECT` (a 1 × 40000 strip would center-crop to one
pixel). A missing file is `NotFound`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import InvalidInput, NotFound

#: File names a folder scan picks up (content decides the reader, not the suffix).
SUPPORTED = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MIN_SIDE = 8
MAX_SIDE = 16384
MAX_ASPECT = 4.0

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Film:
    """One film as read: pixels in torchxrayvision's range and what the reader did to get them."""

    path: str
    pixels: np.ndarray  # (H, W) float32 in [-1024, 1024]
    format: str  # PNG | JPEG | DICOM
    mode: str  # e.g. L, RGBA, I;16, MONOCHROME1
    width: int
    height: int
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a report: format, mode, size and the reader's steps."""
        notes = ", ".join(self.info.get("notes", []))
        return f"{self.format} {self.mode} {self.width}×{self.height}" + (f" ({notes})" if notes else "")


def _check_shape(width: int, height: int, where: str) -> None:
    short, long = min(width, height), max(width, height)
    if short < MIN_SIDE:
        raise InvalidInput(f"image is {width}×{height} pixels: a side under {MIN_SIDE} px is no radiograph",
                           field=where)
    if long > MAX_SIDE:
        raise InvalidInput(f"image is {width}×{height} pixels: a side over {MAX_SIDE} px is refused", field=where)
    if long / short > MAX_ASPECT:
        raise InvalidInput(f"image is {width}×{height} pixels: aspect ratio over {MAX_ASPECT:g} is no chest film",
                           field=where)


def _sniff(p: Path) -> str:
    with p.open("rb") as f:
        head = f.read(132)
    if not head:
        raise InvalidInput("empty file (0 bytes)", field=str(p))
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    from cxr.dicom import is_dicom_header

    if is_dicom_header(head) or p.suffix.lower() in (".dcm", ".dicom"):
        return "DICOM"
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]) else "binary data"
    raise InvalidInput(f"not an image: the content is {kind}, not PNG, JPEG or DICOM", field=str(p))


def _read_raster(p: Path, fmt: str) -> tuple[np.ndarray, str, int, int]:
    """PNG/JPEG → ([0, 1] grey float32, PIL mode, width, height)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            if im.format != fmt:
                raise InvalidInput(f"content is {im.format}, expected {fmt}", field=str(p))
            mode, (w, h) = im.mode, im.size
            _check_shape(w, h, str(p))  # from the header, before decoding anything large
            im.load()
            if fmt == "JPEG":
                im = ImageOps.exif_transpose(im)
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                # 16-bit PNG: scaled by its bit depth, as torchxrayvision does; 8-bit content in an
                # integer container (mode I, max ≤ 255) keeps the 8-bit scale.
                maxval = 65535.0 if (mode != "I" or arr.max() > 255) else 255.0
            else:  # L, LA, P, 1, RGB, RGBA, CMYK: luminance (alpha ignored)
                arr = np.asarray(im.convert("L"), dtype=np.float32)
                maxval = 255.0
    except InvalidInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError,
            MemoryError, struct.error, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        if "truncated" in reason:
            reason = f"truncated file ({reason})"
        raise InvalidInput(f"cannot read {fmt} ({exc.__class__.__name__}: {reason})", field=str(p)) from None
    if arr.ndim != 2:
        raise InvalidInput(f"expected a greyscale image, got array shaped {arr.shape}", field=str(p))
    return np.clip(arr / maxval, 0.0, 1.0), mode, w, h


def read_film(path: str | Path) -> Film:
    """Read one film (PNG, JPEG or DICOM, recognised by content); see the module docstring for what is refused."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("image file does not exist", field=str(p))
    fmt = _sniff(p)
    info: dict[str, Any] = {}
    if fmt == "DICOM":
        from cxr.dicom import read_dicom

        unit, info = read_dicom(p)
        h, w = unit.shape
        _check_shape(w, h, str(p))
        mode = info.get("PhotometricInterpretation", "MONOCHROME2")
    else:
        unit, mode, w, h = _read_raster(p, fmt)
    pixels = ((2.0 * unit - 1.0) * 1024.0).astype(np.float32)
    return Film(str(p), pixels, fmt, mode, int(w), int(h), info)


def read_pixels(path: str | Path) -> np.ndarray:
    """Grayscale pixels scaled to [-1024, 1024] (float32, H x W)."""
    return read_film(path).pixels


def center_crop_resize(img: np.ndarray, resolution: int) -> np.ndarray:
    """torchxrayvision's XRayCenterCrop + XRayResizer on one (H, W) image → (1, R, R)."""
    import torchxrayvision as xrv

    x = xrv.datasets.XRayCenterCrop()(img[None])
    if x.shape[-1] != resolution:
        x = xrv.datasets.XRayResizer(resolution, engine="skimage")(x)
    return x.astype(np.float32)


def load_image_file(path: str | Path, resolution: int) -> np.ndarray:
    """One film as model input: (1, R, R) float32 in [-1024, 1024]."""
    return center_crop_resize(read_pixels(path), resolution)


@dataclass(frozen=True)
class Batch:
    """Films that could be read (model input, in order) and those that could not (path, reason)."""

    paths: tuple[str, ...]
    images: np.ndarray  # (N, 1, R, R)
    films: tuple[Film, ...]
    failures: tuple[tuple[str, str], ...]


def read_batch(paths: Sequence[str | Path], resolution: int) -> Batch:
    """Read every file, collecting failures (`InvalidInput`/`NotFound`) instead of stopping at the first."""
    ok, films, arrays, failed = [], [], [], []
    for path in paths:
        try:
            film = read_film(path)
        except InvalidInput as exc:  # NotFound included
            failed.append((str(path), str(exc)))
            continue
        ok.append(str(path))
        films.append(film)
        arrays.append(center_crop_resize(film.pixels, resolution))
    images = np.stack(arrays) if arrays else np.zeros((0, 1, resolution, resolution), dtype=np.float32)
    return Batch(tuple(ok), images, tuple(films), tuple(failed))


def list_films(folder: str | Path) -> list[Path]:
    """Image files directly in `folder` (by suffix, sorted); `InvalidInput` when there are none."""
    d = Path(folder)
    if not d.is_dir():
        raise NotFound("folder does not exist", field=str(d))
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED)
    if not files:
        raise InvalidInput(f"no image files ({', '.join(SUPPORTED)}) in the folder", field=str(d))
    return files


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
