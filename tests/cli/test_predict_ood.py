"""`decide predict` checks every study against what the version was validated on before it shows a finding:
a CT or MR slice (pydicom's own test files) and a constant image are withheld with their reason, a phantom film
like the calibration split is scored as usual, and a reference too small for the policy's rate says which rate
it holds instead. Without a reference each study says so."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("tiny-home")
OOD_KEYS = {"outside", "degenerate", "distance", "cutoff", "rate", "reasons", "flags", "intensity_distance",
            "intensity_cutoff", "checked", "reference", "requested_rate", "note", "withheld"}


def _json(*args: str) -> list[dict]:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _flat(text: str) -> str:
    """A table's text in reading order, without its borders (cells wrap over several lines)."""
    return " ".join(re.sub(r"[│┃┏┓┗┛┡┩└┘━─╇┳┻┼╋]", " ", text).split())


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """CT and MR slices, a constant image and a phantom site-a film at the tiny model's 32 px."""
    from cxr.data import phantom_dataset
    from cxr.images import write_folder
    from cxr.phantom import PhantomConfig

    root = tmp_path_factory.mktemp("ood-films")
    ds = phantom_dataset(PhantomConfig(site="site-a", split="evaluation", n=1, resolution=32), workers=1)
    write_folder(ds, root / "phantom")
    constant = root / "constant.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(constant)
    return {"ct": Path(get_testdata_file("CT_small.dcm")), "mr": Path(get_testdata_file("MR_small.dcm")),
            "constant": constant, "phantom": next((root / "phantom" / "images").glob("*.png"))}


def test_predict_withholds_ct_mr_and_a_constant_image_and_scores_a_phantom_film(tiny_home, films, wide_console):
    from decision.catalog import Catalog
    from decision.reference import reference_for
    from decision.scoring import load_version

    order = ["ct", "mr", "constant", "phantom"]
    rows = dict(zip(order, _json("predict", *(str(films[k]) for k in order), "--version", "cxr@production"),
                    strict=True))
    for row in rows.values():
        assert set(row["ood"]) == OOD_KEYS and row["ood"]["checked"] and row["ood"]["reference"] == "cxr:1"
    for kind, modality in (("ct", "CT"), ("mr", "MR")):
        row = rows[kind]
        assert row["withheld"] == f"not scored as a chest film: Modality {modality} is not a radiograph (CR/DX)"
        assert row["ood"]["outside"] and row["ood"]["flags"][0] == "not_radiograph"
        assert all(s["positive"] is None for s in row["scores"].values())  # no call on a slice that is no film
        assert any(s["validated"] for s in row["scores"].values())  # the probabilities stay, for the record
    const = rows["constant"]
    assert const["ood"]["degenerate"] and "constant" in const["ood"]["flags"]
    assert const["withheld"].startswith("not scored as a chest film: constant image: the middle 98 % of pixels span 0")
    assert all(s["positive"] is None for s in const["scores"].values())
    ph = rows["phantom"]  # a site-a film like the calibration split: inside, its calls stand
    assert not ph["ood"]["outside"] and ph["ood"]["flags"] == [] and ph["withheld"] is None
    assert ph["ood"]["distance"] <= ph["ood"]["cutoff"]
    assert all(isinstance(s["positive"], bool) for s in ph["scores"].values() if s["validated"])

    # The tiny home holds out round(0.3 × 300) = 90 calibration studies per distance test: a 1 % rate split over
    # two tests (0.5 % each) needs 199. It runs at the smallest rate 90 can hold, 2 / 91, and says so.
    ood = ph["ood"]
    assert ood["requested_rate"] == 0.01 and ood["rate"] == pytest.approx(2 / 91)
    assert "90 calibration studies" in ood["note"] and "199 needed" in ood["note"] and "2.2 %" in ood["note"]
    # At 1 / 91 per test the cut-off is the largest held-out distance (rank ceil(91 × 90/91) = 90 of 90).
    ref = reference_for(Catalog(tiny_home.home), tiny_home.url, load_version("cxr:1").entity)
    assert ood["cutoff"] == pytest.approx(float(ref.ood.features.held_out.max()))
    assert ood["intensity_cutoff"] == pytest.approx(float(ref.ood.intensity.held_out.max()))

    table = runner.invoke(app, ["predict", *(str(films[k]) for k in order), "--version", "cxr@production"],
                          env={"COLUMNS": "300"})  # wide enough that no cell wraps
    assert table.exit_code == 0, table.output
    flat = _flat(table.stdout)
    assert "not scored as a chest film: Modality CT is not a radiograph (CR/DX)" in flat
    assert "not scored as a chest film: Modality MR is not a radiograph (CR/DX)" in flat
    assert "not scored as a chest film: constant image" in flat
    assert "checked at 2.2 %, the smallest it can hold" in flat
    phantom_line = flat[flat.index(films["phantom"].name):]
    first = next(n for n, s in ph["scores"].items() if s["validated"])
    assert phantom_line.split()[1] == first  # its top finding follows its name: it is scored


def test_a_rate_the_reference_can_hold_is_used_as_stated(tiny_home, films, tmp_path, monkeypatch):
    text = resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")
    policy = tmp_path / "policy.toml"
    policy.write_text(re.sub(r"(?m)^ood_rate = 0\.01\b", "ood_rate = 0.05", text))
    monkeypatch.setenv("DECIDE_POLICY", str(policy))
    [row] = _json("predict", str(films["phantom"]), "--version", "cxr@production")
    assert row["ood"]["rate"] == row["ood"]["requested_rate"] == 0.05 and row["ood"]["note"] is None


def test_without_a_reference_each_study_says_not_checked_and_the_header_checks_still_run(tiny_home, films,
                                                                                         tmp_path, wide_console):
    from cxr.weights import save_model
    from decision.registration import register_weights_file
    from decision.scoring import load_version
    from registry.session import session_scope

    weights = tmp_path / "w.safetensors"
    save_model(weights, load_version("cxr:1").weights.model())
    with session_scope(tiny_home.url) as s:  # registered, but with no calibration split
        v = register_weights_file(s, weights, "bare", reason="test: no data sets")
    for how in (["--weights", str(weights)], ["--version", v.ref]):
        ct, ph = _json("predict", str(films["ct"]), str(films["phantom"]), *how)
        for row in (ct, ph):
            assert not row["ood"]["checked"] and row["ood"]["note"].startswith("no reference statistics: not checked")
            assert row["ood"]["distance"] is None and row["ood"]["rate"] is None
        assert ct["withheld"] == "not scored as a chest film: Modality CT is not a radiograph (CR/DX)"
        assert not ph["ood"]["outside"] and ph["withheld"] is None
    assert "has no calibration split" in ph["ood"]["note"]
    table = _flat(runner.invoke(app, ["predict", str(films["phantom"]), "--weights", str(weights)],
                                env={"COLUMNS": "300"}).stdout)
    assert "no reference statistics: not checked" in table and "unregistered weights file" in table
    # the same film twice: every output the same, a preprocessing fault or a repeat — neither is scored
    a, b = _json("predict", str(films["phantom"]), str(films["phantom"]), "--weights", str(weights))
    assert a["ood"]["flags"] == b["ood"]["flags"] == ["same_outputs"] and a["withheld"] and b["withheld"]
