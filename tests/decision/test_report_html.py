"""report.html: self-contained, escaped, and its plots really load in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from decision.documents.registry_html import write_report
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy
from registry.export import export_all
from registry.session import session_scope
from tests import dates

pytestmark = pytest.mark.xdist_group("tiny-home")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium_image_check(page: Path, tmp_path: Path) -> tuple[int, int, list[int]]:
    """Open `page` in headless Chromium; return (images loaded, images, natural widths) after onload."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    out = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    check = re.search(r'id="image-check"[^>]*data-ok="(\d+)"[^>]*data-total="(\d+)"', out)
    assert check, "the page's load check did not run"
    widths = [int(w) for w in re.findall(r'data-loaded-width="(\d+)"', out)]
    return int(check.group(1)), int(check.group(2)), widths


@pytest.fixture
def report(tiny_home, tmp_path) -> Path:
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1},
           "notes": "<script>alert('not markup')</script>"}
    with session_scope(tiny_home.url) as s:
        ingest(s, [parse_report(rep)])
    Engine(tiny_home.url, tiny_home.home, load_policy()).run_pass()
    with session_scope(tiny_home.url, read_only=True) as s:
        export = export_all(s)
    export["reports"][0]["pathology"] = "Cardio<b>megaly</b>"  # data is never markup
    return write_report(export, tmp_path / "report.html", extra={"timings": {"total_s": 1.5}})


def test_report_is_self_contained_with_png_plots(report):
    text = report.read_text()
    for section in ("Per-pathology AUROC across versions", "Surgery K-sweep", "Lineage", "Error reports",
                    "Decisions", "Versions that held production"):
        assert section in text
    images = re.findall(r'<img class="plot" id="([^"]+)" alt="[^"]+" src="data:image/png;base64,([^"]+)"', text)
    ids = [i for i, _ in images]
    assert "lineage" in ids and any(i.startswith("auroc-") for i in ids)
    for _, data in images:
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert "Cardio&lt;b&gt;megaly&lt;/b&gt;" in text and "<b>megaly" not in text


def test_no_sweep_gives_a_note_not_an_empty_image(report):
    text = report.read_text()
    if 'id="k-sweep"' not in text:
        assert "no surgical correction has recorded a K-sweep yet" in text


def test_plots_load_in_headless_chromium(report, tmp_path):
    ok, total, widths = chromium_image_check(report, tmp_path)
    assert total >= 2 and ok == total
    assert widths and all(w > 0 for w in widths)


def test_the_check_notices_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    good = write_report({"versions": [], "reports": [], "decisions": [], "runs": [], "evaluations": [],
                         "datasets": [], "aliases": [], "alias_history": []}, page)
    text = good.read_text().replace(
        "<h2>Surgery K-sweep</h2>", '<img class="plot" alt="broken" src="data:image/png;base64,AAAA"><h2>')
    page.write_text(text)
    ok, total, widths = chromium_image_check(page, tmp_path)
    assert total == 1 and ok == 0 and widths == [0]


def test_case_evidence_grid_explains_the_reported_films_under_each_version(tiny_home, tmp_path):
    from decision.documents.case_maps import case_grid
    from registry import repo
    from registry.entities import DatasetRole

    engine = Engine(tiny_home.url, tiny_home.home, load_policy())
    cat = engine.catalog
    with session_scope(tiny_home.url, read_only=True) as s:
        [fb] = repo.list_datasets(s, role=DatasetRole.feedback, site="site-b")
        v1 = repo.resolve_version(s, "cxr@production")
    probs = cat.probabilities(cat.weights(v1), fb)[:, list(cat.weights(v1).spec.pathologies).index("Cardiomegaly")]
    ds = cat.dataset(fb)
    ids = [ds.image_ids[i] for i in (5, 1, 7)]
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1},
           "cases": [{"image_id": i, "score": 0.5, "label": 0} for i in ids]
           + [{"image_id": "not-registered", "score": 0.9, "label": 0}]}
    with session_scope(tiny_home.url) as s:
        rid = ingest(s, [parse_report(rep)]).ids[0]
        report = repo.get_report(s, rid)
    png, cells = case_grid(cat, tiny_home.url, report, [v1, v1])
    assert png.startswith(PNG_MAGIC)
    assert [c["image_id"] for c in cells] == ids * 2  # found films only, in the report's order
    for c, i in zip(cells[:3], (5, 1, 7), strict=True):  # Grad-CAM's logit is the model's own score
        assert abs(c["probability"] - probs[i]) < 1e-4
        thr = v1.thresholds.get("Cardiomegaly")  # None where calibration could not certify one
        assert c["positive"] == (None if thr is None else c["probability"] >= thr)

    page = write_report({"versions": [], "reports": [], "decisions": [], "runs": [], "evaluations": [],
                         "datasets": [], "aliases": [], "alias_history": []}, tmp_path / "r.html",
                        extra={"case_figures": [("report 1: <b>x</b>", png)]})
    text = page.read_text()
    assert 'id="cases-0"' in text and "report 1: &lt;b&gt;x&lt;/b&gt;" in text
