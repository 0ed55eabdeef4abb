"""Reading real films: PNG of every depth and mode, JPEG, DICOM's grayscale pipeline, and refusals.

The DICOM expectations are computed independently of `cxr/dicom.py`: straight from the standard's
formulas with numpy, and against pydicom's own `apply_windowing` for the window function.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_windowing

from cxr.dicom import window_to_unit
from cxr.errors import InvalidInput, NotFound
from cxr.images import MAX_ASPECT, load_image_file, read_batch, read_film, read_pixels

NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-sample"


def _grey(h: int = 40, w: int = 32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_8bit_png_is_torchxrayvision_normalised(tmp_path):
    a = _grey()
    x = read_pixels(_png(tmp_path / "a.png", a))
    np.testing.assert_allclose(x, (2 * a.astype(np.float64) / 255.0 - 1) * 1024, atol=1e-3)


def test_16bit_png_is_scaled_by_its_bit_depth(tmp_path):
    a = (np.random.default_rng(1).random((30, 30)) * 65535).astype(np.uint16)
    p = tmp_path / "a16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    film = read_film(p)
    np.testing.assert_allclose(film.pixels, (2 * a.astype(np.float64) / 65535.0 - 1) * 1024, atol=0.05)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_reads_as_its_luminance(tmp_path, mode):
    g = _grey()
    rgb = np.stack([g, g, g] + ([np.full_like(g, 255)] if mode == "RGBA" else []), axis=-1)
    x = read_pixels(_png(tmp_path / f"c-{mode}.png", rgb))
    np.testing.assert_allclose(x, read_pixels(_png(tmp_path / "g.png", g)), atol=1e-3)


def test_jpeg_of_any_size_and_its_exif_orientation(tmp_path):
    big = np.tile(np.linspace(0, 255, 3000, dtype=np.float32), (2400, 1)).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(big).save(p, quality=90)
    film = read_film(p)
    assert (film.format, film.width, film.height) == ("JPEG", 3000, 2400)
    expected = (2 * big[5, ::500].astype(np.float64) / 255.0 - 1) * 1024
    np.testing.assert_allclose(film.pixels[5, ::500], expected, atol=20)
    # EXIF orientation 6 (rotate 90° clockwise to display): the film is read upright, i.e. transposed.
    exif = Image.Exif()
    exif[0x0112] = 6
    q = tmp_path / "rot.jpg"
    Image.fromarray(_grey(20, 50)).save(q, exif=exif, quality=95)
    assert read_pixels(q).shape == (50, 20)


def _dicom_copy(tmp_path: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(get_testdata_file(name))
    for k, v in changes.items():
        setattr(ds, k, v)
    out = tmp_path / f"{name}-{'-'.join(map(str, changes.values())) or 'copy'}.dcm"
    ds.save_as(out)
    return out


def test_dicom_cr_follows_the_standard_pipeline(tmp_path):
    """6154 is a real Agfa CR: MONOCHROME1, rescale 0.684/200, window 1600/2800 (LINEAR)."""
    path = get_testdata_file("6154")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    modality = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
    unit = np.clip((modality - c) / w + 0.5, 0, 1)
    expected = (2 * (1 - unit) - 1) * 1024  # MONOCHROME1: low values are white
    film = read_film(path)  # no suffix: recognised by content
    assert film.format == "DICOM" and film.mode == "MONOCHROME1"
    assert film.info["Modality"] == "CR" and "inverted (MONOCHROME1)" in film.info["notes"]
    np.testing.assert_allclose(film.pixels, expected, atol=1e-2)
    assert "PatientName" not in film.info and "Doe" not in str(film.info)


def test_monochrome1_is_the_negative_of_the_same_pixels_as_monochrome2(tmp_path):
    m1 = read_pixels(get_testdata_file("6154"))
    m2 = read_pixels(_dicom_copy(tmp_path, "6154", PhotometricInterpretation="MONOCHROME2"))
    np.testing.assert_allclose(m1, -m2, atol=1e-3)
    assert not np.allclose(m1, m2)
    # a Presentation LUT Shape of INVERSE flips a MONOCHROME2 film back
    inv = read_pixels(_dicom_copy(tmp_path, "6154", PhotometricInterpretation="MONOCHROME2",
                                  PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(inv, m1, atol=1e-3)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(1600.0, 2800.0), (40.0, 1.0), (0.0, 7.0)])
def test_window_matches_pydicom_apply_windowing(function, center, width):
    if function == "LINEAR_EXACT" and width == 1.0:
        width = 0.5  # LINEAR_EXACT allows widths below 1
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    lo = center - 0.5 - (width - 1) / 2 if function == "LINEAR" else center - width / 2
    # values on both sides and exactly at the lower edge of the window (where ≤ vs < matters)
    arr = np.concatenate([np.linspace(center - 2 * width - 5, center + 2 * width + 5, 301), [lo, lo + 1e-9]])
    theirs = apply_windowing(arr.copy(), ds) / 4095.0  # pydicom maps to [0, 2^BitsStored − 1]
    np.testing.assert_allclose(window_to_unit(arr, center, width, function), theirs, atol=1e-9)


def test_dicom_colour_and_multiframe_objects_are_read_with_a_note():
    rgb = read_film(get_testdata_file("SC_rgb_rle.dcm"))
    assert "colour image read as luminance" in rgb.info["notes"]
    assert rgb.pixels.shape == (100, 100) and rgb.pixels.min() >= -1024 and rgb.pixels.max() <= 1024
    dose = read_film(get_testdata_file("rtdose.dcm"))
    assert any(n.startswith("first of 15 frames") for n in dose.info["notes"])


def _corrupt(tmp_path: Path) -> dict[str, Path]:
    buf = io.BytesIO()
    Image.fromarray(_grey(64, 64)).save(buf, format="PNG")
    png = buf.getvalue()
    flipped = bytearray(png)
    for i in range(100, 140):
        flipped[i] ^= 0xFF
    files = {
        "empty.png": b"",
        "notes.png": b"Patient: see previous study.\nNo image here.\n",
        "truncated.png": png[: len(png) // 2],
        "corrupt.png": bytes(flipped),
        "report.txt": b"plain text",
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    out["strip.png"] = _png(tmp_path / "strip.png", np.zeros((1, 40000), dtype=np.uint8))
    out["wide.png"] = _png(tmp_path / "wide.png", np.zeros((20, int(20 * MAX_ASPECT) + 8), dtype=np.uint8))
    out["tiny.png"] = _png(tmp_path / "tiny.png", np.zeros((4, 4), dtype=np.uint8))
    out["no-pixels.dcm"] = Path(shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "no-pixels.dcm"))
    out["truncated.dcm"] = Path(shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "truncated.dcm"))
    return out


REASONS = {
    "empty.png": "empty file", "notes.png": "not an image: the content is text", "truncated.png": "truncated",
    "corrupt.png": "cannot read PNG", "report.txt": "not an image", "strip.png": "40000×1",
    "wide.png": "aspect ratio", "tiny.png": "side under", "no-pixels.dcm": "no pixel data",
    "truncated.dcm": "cannot decode DICOM pixel data",
}


def test_unreadable_inputs_are_refused_with_one_line_naming_the_file(tmp_path):
    files = _corrupt(tmp_path)
    assert set(files) == set(REASONS)
    for name, path in files.items():
        with pytest.raises(InvalidInput) as err:
            read_film(path)
        msg = str(err.value)
        assert str(path) in msg and REASONS[name] in msg, (name, msg)
        assert "\n" not in msg
    with pytest.raises(NotFound):
        read_film(tmp_path / "absent.png")


def test_a_batch_reads_what_it_can_and_lists_the_rest(tmp_path):
    bad = _corrupt(tmp_path)
    good = [_png(tmp_path / f"g{i}.png", _grey(seed=i)) for i in range(2)]
    batch = read_batch([good[0], bad["empty.png"], good[1], tmp_path / "absent.png"], 32)
    assert batch.paths == (str(good[0]), str(good[1])) and batch.images.shape == (2, 1, 32, 32)
    assert [f for f, _ in batch.failures] == [str(bad["empty.png"]), str(tmp_path / "absent.png")]
    np.testing.assert_allclose(batch.images[1], load_image_file(good[1], 32))


@pytest.mark.skipif(not NIH.is_dir(), reason="the NIH sample (../shared/data/nih-sample) is not on this machine")
def test_real_nih_films_including_an_original_rgba_one():
    rgba = NIH / "images" / "00000100_000.png"  # published as RGBA, 1024²
    film = read_film(rgba)
    assert (film.mode, film.width, film.height) == ("RGBA", 1024, 1024)
    small = read_film(NIH / "images" / "00000493_000.png")  # downscaled to 256², greyscale
    assert (small.mode, small.width) == ("L", 256)
    for f in (film, small):
        assert f.pixels.min() >= -1024 and f.pixels.max() <= 1024 and f.pixels.std() > 100
    assert load_image_file(rgba, 64).shape == (1, 64, 64)


def test_colour_dicom_is_read_once_as_rgb_luminance_jpeg2000_included():
    """pydicom ≥ 3 hands colour pixel data over as RGB (YBR_FULL_422 JPEG, YBR_RCT JPEG 2000): the reader takes
    its luminance and converts nothing again (a second YBR→RGB conversion shifted every colour; YBR_RCT has no
    converter and crashed the read)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import pixel_array

    for name in ("examples_ybr_color.dcm", "examples_jpeg2k.dcm"):
        path = get_testdata_file(name)
        film = read_film(path)
        rgb = pixel_array(path, as_rgb=True)
        rgb = rgb[0] if rgb.ndim == 4 else rgb
        bits = int(pydicom.dcmread(path, stop_before_pixels=True).BitsStored)
        lum = (rgb.astype(np.float64) / (2**bits - 1)) @ np.array([0.299, 0.587, 0.114])
        assert np.allclose(film.pixels, ((2 * lum - 1) * 1024).astype(np.float32), atol=1e-3), name
