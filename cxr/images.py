"""Reading real films the way torchxrayvision does, and refusing what is not one.

What comes in from hospitals: 8-bit and 16-bit greyscale PNG, RGB/RGBA PNG (NIH published some
of its 1024² films as RGBA), JPEG of any size (EXIF orientation applied), and DICOM (see
`cxr/dicom.py`: modality LUT → VOI LUT/window → MONOCHROME1 inversion). The type is recognised by
the file's content, not its name (PACS exports often have no suffix). Every film becomes grey
intensities in [0, 1], then torchxrayvision's [-1024, 1024] (`xrv.utils.normalize`: 8-bit / 255,
16-bit / 65535), then its center crop and resize to the model's resolution (`XRayResizer`, i.e.
scikit-image's anti-aliased bilinear `resize`, not area averaging).

`preprocessing_recipe(R)` states these steps exactly, as text and as machine-readable values, for
a deployment that runs the ONNX export without this repository (`cxr.onnx_export` writes it into
the model's metadata); the tests replay it with Pillow, numpy and scikit-image alone and compare
the result with `read_batch`'s, bit for bit.

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
#: Pillow modes read as integers, without conversion, with the value that maps to white. Mode I
#: whose maximum is at most 255 (8-bit content in an integer container) is scaled by 255 instead.
_INTEGER_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


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
            if mode in _INTEGER_MODES:
                arr = np.asarray(im, dtype=np.float32)
                # 16-bit PNG: scaled by its bit depth, as torchxrayvision does; 8-bit content in an
                # integer container (mode I, max ≤ 255) keeps the 8-bit scale.
                maxval = _INTEGER_MODES[mode] if (mode != "I" or arr.max() > 255) else 255.0
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


#: Identifies the recipe's JSON; `RECIPE_VERSION` grows when a field changes meaning.
RECIPE_FORMAT = "cxr-decide/preprocessing-recipe"
RECIPE_VERSION = 1


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("Pillow", "numpy", "scikit-image", "scipy", "torchxrayvision", "pydicom"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def preprocessing_recipe(resolution: int) -> dict[str, Any]:
    """What `read_batch` does to a film before the network, for a model of input side `resolution`.

    Returns a JSON-ready dict: `steps` in order, each with `text` (one sentence a person can follow)
    and the same step as values (functions with their exact arguments); `input` names the tensor.
    This describes `read_film` and `center_crop_resize` above: change them and this together (the
    tests replay the recipe with Pillow, numpy and scikit-image and compare with `read_batch`).
    """
    r = int(resolution)
    integer = ", ".join(_INTEGER_MODES)
    read = {
        "op": "read",
        "sniff": {"PNG": "bytes 0-7 are 89 50 4E 47 0D 0A 1A 0A", "JPEG": "bytes 0-2 are FF D8 FF",
                  "DICOM": "bytes 128-131 are 'DICM' (or the name ends .dcm/.dicom)"},
        "raster": {
            "reader": "PIL.Image.open", "exif_transpose": ["JPEG"],
            "integer_modes": dict(_INTEGER_MODES), "integer_pixels": "numpy.asarray(im, dtype=numpy.float32)",
            "eight_bit_if_max_at_most_255": ["I"],
            "other_modes": {"convert": "L", "maxval": 255.0,
                            "pixels": "numpy.asarray(im.convert('L'), dtype=numpy.float32)"},
            "unit": "numpy.clip(pixels / maxval, 0.0, 1.0)", "dtype": "float32",
        },
        "dicom": {
            "reader": "pydicom.dcmread(path).pixel_array", "frame": 0,
            "monochrome": ["pydicom.pixels.apply_modality_lut",
                           "VOILUTSequence: pydicom.pixels.apply_voi(x, ds, 0) / (2**LUTDescriptor[2] - 1)",
                           "else WindowCenter/WindowWidth (first values) with VOILUTFunction, mapped to [0, 1] "
                           "(PS3.3 C.11.2.1.2; cxr.dicom.window_to_unit)",
                           "else (x - min) / (max - min)",
                           "1 - unit when (PhotometricInterpretation == MONOCHROME1) != "
                           "(PresentationLUTShape == INVERSE)"],
            "colour": "(RGB, YBR_* converted to RGB) / (2**BitsStored - 1) @ [0.299, 0.587, 0.114]",
            "unit": "numpy.clip(unit.astype(numpy.float32), 0.0, 1.0)", "dtype": "float32",
        },
        "refused": {"min_side": MIN_SIDE, "max_side": MAX_SIDE, "max_aspect": MAX_ASPECT},
        "text": "Read the file as grey intensities v in [0, 1], float32, choosing the reader by content (PNG, "
                "JPEG or DICOM), not by name. PNG/JPEG with Pillow (JPEG: PIL.ImageOps.exif_transpose first): "
                f"modes {integer} as numpy.asarray(im, float32) / 65535 (mode I whose maximum is at most 255: / 255); "
                "every other mode (L, LA, P, 1, RGB, RGBA, CMYK) as numpy.asarray(im.convert('L'), float32) / 255 "
                "(Pillow's luma L = R*299/1000 + G*587/1000 + B*114/1000; alpha is dropped, not composited); "
                "then clip to [0, 1]. DICOM with pydicom: first frame; MONOCHROME1/2 through the modality LUT, "
                "then a VOI LUT Sequence (/ (2^bits - 1)), else the first WindowCenter/WindowWidth with its "
                "VOILUTFunction mapped to [0, 1], else min-max; inverted (1 - v) when it is MONOCHROME1 or its "
                "Presentation LUT Shape is INVERSE, not both; colour DICOM as 0.299 R + 0.587 G + 0.114 B of "
                "value / (2^BitsStored - 1). "
                f"Refused: a side under {MIN_SIDE} or over {MAX_SIDE} pixels, an aspect ratio over {MAX_ASPECT:g}.",
    }
    normalize = {
        "op": "normalize", "formula": "(2.0 * unit - 1.0) * 1024.0", "dtype": "float32", "range": [-1024.0, 1024.0],
        "same_as": "torchxrayvision.utils.normalize(pixels, maxval)",
        "text": "x = (2 * v - 1) * 1024 in float32: torchxrayvision's normalisation to [-1024, 1024] "
                "(xrv.utils.normalize(pixels, maxval)).",
    }
    crop = {
        "op": "center_crop", "shape": "(1, H, W)", "side": "min(H, W)", "top": "H // 2 - side // 2",
        "left": "W // 2 - side // 2", "same_as": "torchxrayvision.datasets.XRayCenterCrop()",
        "text": "Centre-crop to a square: with x shaped (1, H, W), s = min(H, W), top = H // 2 - s // 2, "
                "left = W // 2 - s // 2, x = x[:, top:top + s, left:left + s] (torchxrayvision's XRayCenterCrop).",
    }
    resize = {
        "op": "resize", "when": "side != resolution", "function": "skimage.transform.resize",
        "output_shape": [1, r, r], "kwargs": {"mode": "constant", "preserve_range": True},
        "resolved_kwargs": {"order": 1, "mode": "constant", "cval": 0.0, "clip": True, "preserve_range": True,
                            "anti_aliasing": "side > resolution",
                            "anti_aliasing_sigma": "(0, (side / resolution - 1) / 2, (side / resolution - 1) / 2)"},
        "then": "astype(numpy.float32)", "same_as": f"torchxrayvision.datasets.XRayResizer({r}, engine='skimage')",
        "text": f"Only when s != {r}: x = skimage.transform.resize(x, (1, {r}, {r}), mode='constant', "
                "preserve_range=True).astype(float32) (torchxrayvision's XRayResizer, engine 'skimage'). With "
                "scikit-image's defaults that is order=1 (bilinear), cval=0 (mid-grey: the image is padded with 0, "
                "not -1024), clip=True (to the input's [min, max], widened to 0 when the padding brought values "
                f"there), and, when downsampling (s > {r}), anti_aliasing=True: a Gaussian of sigma (s / {r} - 1) / 2 "
                "along both image axes (scipy.ndimage.gaussian_filter, mode 'grid-constant', cval 0, truncate 4) "
                "before scipy.ndimage.zoom(order=1, grid_mode=True, mode='grid-constant', cval=0) to the zoom "
                f"{r} / s. It is not area averaging: a box filter (PIL's "
                "Image.BOX, OpenCV's INTER_AREA) gives other pixels and other probabilities.",
    }
    tensor = {
        "op": "to_tensor", "input": "image", "layout": "NCHW", "shape": ["batch", 1, r, r], "dtype": "float32",
        "text": f"Stack the films into the input `image`, shaped (batch, 1, {r}, {r}), float32, NCHW.",
    }
    return {"format": RECIPE_FORMAT, "version": RECIPE_VERSION, "resolution": r,
            "input": {"name": "image", "layout": "NCHW", "shape": ["batch", 1, r, r], "dtype": "float32",
                      "range": [-1024.0, 1024.0]},
            "steps": [read, normalize, crop, resize, tensor], "library_versions": _library_versions()}


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
