"""Data sources: folder + CSV round trip, patient-disjoint splits, bad inputs."""

import numpy as np
import pytest

from cxr.data import folder_dataset, phantom_dataset, split_by_patient
from cxr.errors import InvalidInput, NotFound
from cxr.images import write_folder
from cxr.phantom import PhantomConfig
from cxr.sources import open_source


@pytest.fixture(scope="module")
def small_phantom():
    return phantom_dataset(PhantomConfig(n=60, resolution=32), workers=1)


def test_folder_round_trip_reproduces_pixels_and_labels(tmp_path, small_phantom):
    csv_path = write_folder(small_phantom, tmp_path / "set")
    ds = folder_dataset(tmp_path / "set", csv_path, resolution=32)
    assert len(ds) == len(small_phantom)
    assert np.array_equal(ds.aligned_labels(small_phantom.label_names)[:, :14], small_phantom.labels[:, :14])
    idx = np.arange(5)
    assert np.allclose(ds.images(idx), small_phantom.images(idx), atol=1e-3)
    assert ds.views == small_phantom.views
    # Same source string, same digest.
    again = open_source(f"folder:{tmp_path / 'set'}", resolution=32, split="train")
    assert again.digest() == open_source(f"folder:{tmp_path / 'set'}", resolution=32, split="train").digest()


def test_split_by_patient_is_disjoint_and_complete(small_phantom):
    parts = split_by_patient(small_phantom, seed=1)
    assert sum(len(p) for p in parts.values()) == len(small_phantom)
    pids = [set(p.patient_ids) for p in parts.values()]
    for i in range(len(pids)):
        for j in range(i + 1, len(pids)):
            assert not pids[i] & pids[j]
    # Deterministic.
    again = split_by_patient(small_phantom, seed=1)
    assert all(again[k].image_ids == parts[k].image_ids for k in parts)


def test_digest_changes_with_labels(small_phantom):
    other = small_phantom.subset(np.arange(len(small_phantom)))
    assert other.digest() == small_phantom.digest()
    labels = small_phantom.labels.copy()
    labels[0, 0] = 1 - labels[0, 0]
    from dataclasses import replace

    assert replace(small_phantom, labels=labels).digest() != small_phantom.digest()


def _folder(tmp_path, header, rows, make_images=True):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    if make_images:
        for r in rows:
            Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "img" / r[0])
    lines = [",".join(header)] + [",".join(r) for r in rows]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "img", tmp_path / "labels.csv"


def test_missing_image_names_the_line(tmp_path):
    folder, csv_path = _folder(tmp_path, ["image", "Cardiomegaly"], [["a.png", "1"]], make_images=False)
    with pytest.raises(NotFound, match=r"labels.csv:2:image"):
        folder_dataset(folder, csv_path, 32)


def test_wrong_columns_are_refused(tmp_path):
    folder, csv_path = _folder(tmp_path, ["file_name", "Cardiomegaly"], [["a.png", "1"]])
    with pytest.raises(InvalidInput, match="image column"):
        folder_dataset(folder, csv_path, 32)
    folder, csv_path = _folder(tmp_path, ["image", "heart_big"], [["a.png", "1"]])
    with pytest.raises(InvalidInput, match="no label columns"):
        folder_dataset(folder, csv_path, 32)


def test_bad_label_value_names_line_and_column(tmp_path):
    folder, csv_path = _folder(tmp_path, ["image", "Effusion"], [["a.png", "1"], ["b.png", "maybe"]])
    with pytest.raises(InvalidInput, match=r"labels.csv:3:Effusion"):
        folder_dataset(folder, csv_path, 32)


def test_unreadable_image_is_refused_on_load(tmp_path):
    folder, csv_path = _folder(tmp_path, ["image", "Effusion"], [["a.png", "1"]])
    (folder / "a.png").write_bytes(b"\x89PNG but not really")
    ds = folder_dataset(folder, csv_path, 32)
    with pytest.raises(InvalidInput, match=r"a\.png: not an image"):
        ds.images([0])


def test_paths_cannot_escape_the_image_folder(tmp_path):
    folder, csv_path = _folder(tmp_path, ["image", "Effusion"], [["a.png", "1"]])
    csv_path.write_text("image,Effusion\n../labels.csv,1\n")
    with pytest.raises(InvalidInput, match="escapes"):
        folder_dataset(folder, csv_path, 32)


def test_uncertain_and_empty_labels_are_unknown(tmp_path):
    folder, csv_path = _folder(tmp_path, ["image", "Effusion", "Mass"], [["a.png", "-1", ""], ["b.png", "0", "1"]])
    ds = folder_dataset(folder, csv_path, 32)
    assert np.isnan(ds.labels[0]).all()
    assert ds.labels[1].tolist() == [0.0, 1.0]
