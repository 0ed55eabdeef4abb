"""DICOM radiographs to display intensities, the way a reading workstation shows them.

Hospitals store chest films as DICOM (CR/DX), not PNG. A stored pixel value is not a brightness:
the standard's grayscale pipeline (PS3.3 C.11, PS3.4 N.2) turns it into one, in this order —

1. **modality LUT**: `RescaleSlope`/`RescaleIntercept` or a Modality LUT Sequence (pydicom's
   `apply_modality_lut`);
2. **VOI LUT**: a VOI LUT Sequence (pydicom's `apply_voi`, output scaled by the LUT's bit depth),
   else the first `WindowCenter`/`WindowWidth` with its `VOILUTFunction` (LINEAR, LINEAR_EXACT,
   SIGMOID; computed here straight to [0, 1] — the tests check it against pydicom's
   `apply_windowing`), else the image's own min–max;
3. **polarity**: `MONOCHROME1` means low values are *white* (pydicom never inverts it), so it is
   inverted here; a Presentation LUT Shape of `INVERSE` inverts once more.

The result is float32 in [0, 1] (0 = black): `cxr.images` maps it to torchxrayvision's
[-1024, 1024] like any other film. Colour secondary captures are turned into luminance; only the
first frame of a multi-frame object is read. Patient-identifying attributes are never returned.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import InvalidInput

log = logging.getLogger(__name__)

#: Attributes safe to show in a report (technical, not identifying).
_INFO_KEYS = ("Modality", "PhotometricInterpretation", "ViewPosition", "BodyPartExamined", "BitsStored")


def is_dicom_header(head: bytes) -> bool:
    """True for a DICOM Part 10 file: 128-byte preamble, then `DICM`."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def window_to_unit(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1] instead of the output bit range.

    LINEAR: x <= c - 0.5 - (w-1)/2 → 0, x > c - 0.5 + (w-1)/2 → 1, else ((x - (c-0.5)) / (w-1) + 0.5);
    LINEAR_EXACT: the same with c and w as given; SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
    Raises `InvalidInput` for a width the function does not allow.
    """
    x = np.asarray(arr, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise InvalidInput(f"window width {width} must be > 0 for SIGMOID", field="WindowWidth")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR":
        if width < 1:
            raise InvalidInput(f"window width {width} must be >= 1 for LINEAR", field="WindowWidth")
        center, width = center - 0.5, width - 1.0
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise InvalidInput(f"window width {width} must be > 0 for LINEAR_EXACT", field="WindowWidth")
    else:
        raise InvalidInput(f"unsupported VOI LUT function {function!r}", field="VOILUTFunction")
    out = np.empty_like(x)
    below, above = x <= center - width / 2, x > center + width / 2
    between = ~below & ~above
    out[below], out[above] = 0.0, 1.0
    if width > 0:
        out[between] = (x[between] - center) / width + 0.5
    else:  # LINEAR with width 1: a step at the centre
        out[between] = 1.0
    return out


def _first(value: Any) -> float:
    """A DS/IS value that may be multi-valued (several windows): the first one."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _one_line(exc: BaseException) -> str:
    """An exception as one line (decoder errors span several)."""
    return f"{exc.__class__.__name__}: " + " ".join(str(exc).split())


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x, dtype=np.float64)


def header_info(path: str | Path) -> dict[str, str] | None:
    """The technical attributes `read_dicom` reports (Modality, ViewPosition, …), read from the header alone;
    None when `path` is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(Path(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        return None
    return {k: str(ds.get(k)) for k in _INFO_KEYS if ds.get(k) not in (None, "")}


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM film: (H × W float32 in [0, 1], 0 = black; technical info for the report).

    Raises `InvalidInput` naming the file when it is not DICOM, has no pixel data, uses a
    compression no installed decoder reads, or is not a greyscale/RGB image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi

    p = Path(path)
    with warnings.catch_warnings(record=True) as caught:  # pydicom warns about odd files; we log instead
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"not a readable DICOM file ({_one_line(exc)})", field=str(p)) from None
        if "PixelData" not in ds:
            raise InvalidInput("DICOM file has no pixel data (not an image object)", field=str(p))
        try:
            arr = ds.pixel_array
        except Exception as exc:  # decoders raise RuntimeError, NotImplementedError, ValueError, ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
            raise InvalidInput(f"cannot decode DICOM pixel data ({name}): {_one_line(exc)}", field=str(p)) from None
    for w in caught:
        log.info("%s: pydicom: %s", p, w.message)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    notes: list[str] = []
    if frames > 1:
        arr = arr[0]
        notes.append(f"first of {frames} frames")
    if samples == 3 or photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):
        # pydicom ≥ 3 returns colour pixel data as RGB already (`as_rgb`, its default), JPEG 2000's
        # YBR_RCT/ICT included: converting YBR again would double-convert (and YBR_RCT has no converter)
        bits = int(ds.get("BitsStored", 8) or 8)
        rgb = np.asarray(arr, dtype=np.float64) / float(2**bits - 1)
        unit = rgb @ np.array([0.299, 0.587, 0.114])
        notes.append("colour image read as luminance")
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        x = apply_modality_lut(np.asarray(arr), ds)
        if ds.get("VOILUTSequence"):
            item = ds.VOILUTSequence[0]
            bits = int(item.LUTDescriptor[2])
            unit = np.asarray(apply_voi(x, ds, 0), dtype=np.float64) / float(2**bits - 1)
            notes.append("VOI LUT")
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
            try:
                unit = window_to_unit(x, c, w, str(ds.get("VOILUTFunction", "LINEAR")))
            except InvalidInput as exc:
                raise InvalidInput(str(exc), field=str(p)) from None
            notes.append(f"window {c:g}/{w:g}")
        else:
            unit = _min_max(np.asarray(x, dtype=np.float64))
            notes.append("no VOI window: full range")
        inverse = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"
        if (photometric == "MONOCHROME1") != inverse:
            unit = 1.0 - unit
            notes.append("inverted (MONOCHROME1)" if photometric == "MONOCHROME1" else "inverted (INVERSE LUT)")
    else:
        raise InvalidInput(f"unsupported photometric interpretation {photometric!r}", field=str(p))
    unit = np.clip(np.asarray(unit, dtype=np.float32), 0.0, 1.0)
    if unit.ndim != 2:
        raise InvalidInput(f"expected a 2-D image, got pixel data shaped {tuple(unit.shape)}", field=str(p))
    info = {k: str(ds.get(k)) for k in _INFO_KEYS if ds.get(k) not in (None, "")}
    info["notes"] = notes
    log.info("read DICOM %s: %s", p, ", ".join(notes))
    return unit, info
