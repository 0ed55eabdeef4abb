"""The per-study clinical report: phantom, real NIH (RGBA 1024² included) and DICOM films in, pages that
headless Chromium opens with every image decoded, the disclaimer, the exclusion rule applied and shown."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from cxr.data import phantom_dataset
from cxr.images import write_folder
from cxr.labelstats import nih_reference_stats
from cxr.phantom import PhantomConfig
from decision.documents.clinical import DISCLAIMER, build_studies, version_view
from decision.documents.clinical_html import write_study
from decision.documents.clinical_run import report_films
from decision.scoring import load_version
from tests.decision.test_report_html import chromium_image_check

pytestmark = pytest.mark.xdist_group("tiny-home")
NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-sample"


@pytest.fixture
def films(tmp_path) -> list[Path]:
    ds = phantom_dataset(PhantomConfig(site="site-b", split="evaluation", n=2, resolution=64), workers=1)
    write_folder(ds, tmp_path / "phantom")
    out = [sorted((tmp_path / "phantom" / "images").glob("*.png"))[0], Path(get_testdata_file("6154"))]
    if NIH.is_dir():
        out += [NIH / "images" / "00000100_000.png", NIH / "images" / "00000493_000.png"]  # RGBA 1024², 256² L
    return out


@pytest.mark.slow  # about 40 s on 2 busy cores: four films, four headless-Chromium runs
def test_report_pages_load_in_chromium_with_overlays_and_disclaimer(tiny_home, films, tmp_path):
    res = report_films(films, version="cxr@production", out=tmp_path / "rep")
    assert res["version"] == "cxr:1" and not res["failed"]
    assert len(res["pages"]) == len(films) and res["out"].endswith("index.html")
    index = Path(res["out"]).read_text()
    assert DISCLAIMER[:40] in index and all(Path(p).name in index for p in res["pages"])
    for page, study in zip(res["pages"], res["studies"], strict=True):
        text = Path(page).read_text()
        assert 'id="disclaimer"' in text.replace("'", '"') and "not a diagnosis" in text
        overlays = re.findall(r'id="overlay-\d+"', text)
        assert len(overlays) == len(study["findings"])  # one Grad-CAM per retained positive finding
        assert "http://" not in text and "https://" not in text  # self-contained
        assert "cxr:1 — baseline" in text and "AUROC [95% CI]" in text
        ok, total, widths = chromium_image_check(Path(page), tmp_path)
        assert total == 1 + len(overlays) and ok == total and all(w > 0 for w in widths), page
    dicom = next(s for s in res["studies"] if s["study"] == "6154")
    assert "MONOCHROME1" in dicom["film"] and "inverted" in dicom["film"]
    if NIH.is_dir():
        rgba = next(s for s in res["studies"] if s["study"] == "00000100_000")
        assert rgba["film"].startswith("PNG RGBA 1024×1024")
    for s in res["studies"]:
        for f in s["findings"]:
            assert f["probability"] >= f["threshold"] and f["region"]


def test_calls_follow_the_versions_operating_points(tiny_home, films, tmp_path):
    from decision.scoring import score_images

    loaded = load_version("cxr@production")
    res = report_films(films[:1], version="cxr@production", out=tmp_path / "one.html")
    assert res["out"].endswith("one.html") and len(res["pages"]) == 1
    from cxr.images import load_image_file

    probs, _ = score_images(loaded.weights.model(), load_image_file(films[0], 32)[None])
    names = loaded.weights.spec.pathologies
    study = res["studies"][0]
    called = {f["pathology"] for f in study["findings"]} | {f["pathology"] for f in study["excluded"]}
    expected = {n for j, n in enumerate(names) if n and loaded.thresholds.get(n) is not None
                and probs[0, j] >= loaded.thresholds[n]}
    assert called == expected
    for f in study["others"]:
        assert f["call"] == ("no operating point" if f["threshold"] is None else "negative")


def test_a_mutually_exclusive_finding_far_more_certain_excludes_a_marginal_one(tiny_home, films, tmp_path):
    loaded = load_version("cxr@production")
    model = loaded.weights.model()
    from cxr.images import load_image_file
    from decision.scoring import score_images

    x = load_image_file(films[0], model.spec.resolution)[None]
    probs, _ = score_images(model, x)
    names = list(model.spec.pathologies)
    ph, pc = probs[0, names.index("Hernia")], probs[0, names.index("Cardiomegaly")]
    # Hernia barely above its operating point; Cardiomegaly (J = 0.0023 with Hernia) far above its own.
    thresholds = {n: None for n in names if n} | {"Hernia": float(ph) * 0.999, "Cardiomegaly": float(pc) / 50}
    custom = dataclasses.replace(loaded, thresholds=thresholds)
    stats = nih_reference_stats()
    [study] = build_studies(custom, x, ["s<1>"], [str(films[0])], ["phantom"], stats)
    assert [f.pathology for f in study.excluded] == ["Hernia"]
    assert study.excluded[0].exclusion["because"] == "Cardiomegaly"
    assert [f.pathology for f in study.findings] == ["Cardiomegaly"]
    page = write_study(study, version_view(custom, stats), tmp_path / "s.html").read_text()
    assert "Excluded: a mutually exclusive finding is far more certain" in page
    assert f"{stats.get('Hernia', 'Cardiomegaly'):.4f}" in page and "Jaccard J(A, B) &lt; 0.01" in page
    assert "Study s&lt;1&gt;" in page and "s<1>" not in page  # data is never markup
    ok, total, _ = chromium_image_check(tmp_path / "s.html", tmp_path)
    assert ok == total == 2


def test_an_unreadable_film_stops_the_batch_unless_keep_going(tiny_home, films, tmp_path):
    from cxr.errors import InvalidInput

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(InvalidInput, match=r"broken\.png"):
        report_films([films[0], bad], out=tmp_path / "r")
    res = report_films([films[0], bad], out=tmp_path / "r", keep_going=True)
    assert [f[0] for f in res["failed"]] == [str(bad)] and len(res["studies"]) == 1
    assert "broken.png" in Path(res["out"]).read_text()  # listed on the index page


def test_a_sites_operating_points_are_used_with_site(tiny_home, films):
    from registry import repo
    from registry.session import session_scope

    with session_scope(tiny_home.url) as s:
        v1 = repo.resolve_version(s, "cxr@production")
        v2 = repo.derive_version(s, v1.id, site_thresholds={"site-b": {"Cardiomegaly": 0.999}}, reason="test")
    at_b, default = load_version(v2.ref, site="site-b"), load_version(v2.ref)
    assert at_b.thresholds["Cardiomegaly"] == 0.999
    assert default.thresholds["Cardiomegaly"] == v1.thresholds["Cardiomegaly"]
    assert {k: v for k, v in at_b.thresholds.items() if k != "Cardiomegaly"} == \
        {k: v for k, v in default.thresholds.items() if k != "Cardiomegaly"}


def test_mask_border_sets_only_the_band_to_the_films_median():
    from decision.documents.clinical import mask_border

    x = np.arange(2 * 1 * 20 * 20, dtype=np.float32).reshape(2, 1, 20, 20)
    m = mask_border(x, band=0.1)
    for k in range(2):
        inner = x[k, 0, 2:18, 2:18]
        assert np.array_equal(m[k, 0, 2:18, 2:18], inner)
        band = np.ones((20, 20), bool)
        band[2:18, 2:18] = False
        assert np.all(m[k, 0][band] == np.median(inner))
    assert not np.shares_memory(m, x)


def test_the_shortcut_check_flags_a_call_that_needs_the_films_border(tiny_home, films):
    from cxr.images import load_image_file
    from decision.documents.clinical import mask_border
    from decision.scoring import score_images

    loaded = load_version("cxr@production")
    model = loaded.weights.model()
    x = load_image_file(films[0], model.spec.resolution)[None]
    p, _ = score_images(model, x)
    pm, _ = score_images(model, mask_border(x))
    names = list(model.spec.pathologies)
    j = int(np.argmax(np.where([bool(n) for n in names], p[0] - pm[0], -np.inf)))  # the most border-dependent
    assert p[0, j] > pm[0, j]
    t = float(pm[0, j] + p[0, j]) / 2  # between the two: positive as filmed, negative once the border is gone
    custom = dataclasses.replace(loaded, thresholds={n: None for n in names if n} | {names[j]: t})
    [study] = build_studies(custom, x, ["s"], ["f"], ["phantom"], nih_reference_stats())
    [f] = study.findings
    assert f.probability_border_masked == pytest.approx(float(pm[0, j]), abs=1e-6)
    assert any("border masked out" in w and "rests on the film's edge" in w for w in f.warnings)


def _chromium_dom(page: Path, tmp_path: Path) -> str:
    """The DOM headless Chromium builds from `page` (after its scripts ran); skips as `chromium_image_check`."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-dom'}", "--virtual-time-budget=10000", "--dump-dom",
         page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow  # about 40 s on 2 busy cores: a real film's findings, each with its Grad-CAM, and Chromium
def test_a_real_film_gets_the_ood_banner_before_any_finding_in_chromium(tiny_home, tmp_path):
    film = NIH / "images" / "00000100_000.png"  # an RGBA 1024² original: nothing like the 32 px phantoms
    if not film.is_file():
        pytest.skip(f"the NIH sample films are not at {NIH} (never copied into the repository)")
    res = report_films([film], version="cxr@production", out=tmp_path / "nih.html")
    [study] = res["studies"]
    assert study["ood"]["outside"] and study["ood"]["checked"] and study["withheld"] is None
    assert study["findings"], "the tiny model calls findings on this film: they must come after the banner"
    dom = _chromium_dom(tmp_path / "nih.html", tmp_path)
    banner, first = dom.find('id="ood-banner"'), dom.find('class="finding"')
    assert 0 <= banner < dom.find("<h2>Findings</h2>") < first, "the banner must precede every finding"
    assert banner < dom.find('id="film"')  # before the film itself, at the top of the page
    text = re.sub(r"<[^>]+>", " ", dom[banner:first])
    assert "This film lies outside what cxr:1 was validated on" in " ".join(text.split())
    assert "The findings below may be meaningless" in text
    ok, total, _ = chromium_image_check(tmp_path / "nih.html", tmp_path)
    assert ok == total == 1 + len(study["findings"])


def test_a_ct_slice_gets_the_banner_and_no_findings_and_data_stays_escaped(tiny_home, tmp_path):
    ct = tmp_path / "ct<1>.dcm"  # a file name that would be markup
    ct.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    res = report_films([ct], version="cxr@production", out=tmp_path / "ct.html")
    [study] = res["studies"]
    assert study["withheld"] == "not scored as a chest film: Modality CT is not a radiograph (CR/DX)"
    assert study["findings"] == study["excluded"] == study["others"] == []
    assert study["ood"]["flags"][0] == "not_radiograph" and study["ood"]["reference"] == "cxr:1"
    page = (tmp_path / "ct.html").read_text()
    assert "id='ood-banner'" in page and "Modality CT is not a radiograph (CR/DX)" in page
    assert "No finding is shown" in page and "the DICOM header does not say this study is one" in page
    assert "<h2>Findings</h2>" not in page and "All other pathologies" not in page and "overlay-" not in page
    assert "Study ct&lt;1&gt;" in page and "ct<1>" not in page
    assert 'id="disclaimer"' in page.replace("'", '"')


def test_a_study_inside_the_reference_or_not_checked_says_so_without_a_banner(tiny_home, films, tmp_path):
    from decision.documents.clinical_html import study_page
    from decision.scoring import OodCheck, ood_check

    loaded = load_version("cxr@production")
    from cxr.images import load_image_file

    x = load_image_file(films[0], 32)[None]
    stats = nih_reference_stats()
    [inside] = build_studies(loaded, x, ["s"], ["f"], ["phantom"], stats, ood=ood_check(loaded, 0.5))
    assert inside.ood is not None and inside.ood.checked and inside.ood.assessment.rate == 0.5
    [bare] = build_studies(loaded, x, ["s"], ["f"], ["phantom"], stats, ood=OodCheck.unavailable("test", 0.01))
    page = study_page(bare, version_view(loaded, stats))
    assert "Not checked against what cxr:1 was validated on" in page and "no reference statistics" in page
    assert "ood-banner" not in page and bare.ood is not None and not bare.ood.checked
    from cxr.ood import StudyAssessment
    from decision.scoring import OodVerdict

    within = OodVerdict(StudyAssessment(False, False, 1.5, 4.68, 2 / 91, (), ()), True, "cxr:1", 0.01, None)
    page = study_page(dataclasses.replace(bare, ood=within), version_view(loaded, stats))
    assert ("Within what cxr:1 was validated on: feature distance 1.5 ≤ cut-off 4.68 at a 2.2 % per-study "
            "false-alarm rate") in page and "ood-banner" not in page
