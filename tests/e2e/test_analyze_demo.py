"""The paper's analyses on the demo home: `decide analyze channels cxr@production`, the figures in
report.html, and a clinical report of a phantom film under the demo's compact production model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]
runner = CliRunner()
CATEGORIES = ("Perfect", "Legitimate", "Mixed", "Conflict")


def test_analyze_channels_on_the_demo_production_version(demo_copy, tmp_path):
    table = runner.invoke(app, ["analyze", "channels", "cxr@production", "--plot", str(tmp_path / "ch.png")])
    assert table.exit_code == 0, table.output
    body = json.loads(runner.invoke(app, ["analyze", "channels", "cxr@production", "--json"]).stdout)
    assert 0 < sum(body["counts"].values()) == len(body["channels"]) <= 100  # the compact model has 102 channels
    assert body["n_channels"] == 102
    flat = " ".join(table.stdout.replace("│", " ").split())  # the table's cells, in reading order
    for cat in CATEGORIES:  # the table's row: category, rule, count, share, the paper's count
        assert re.search(rf"{cat} .*? {body['counts'][cat]} \d+% {body['paper_counts'][cat]}", flat), cat
    assert (tmp_path / "ch.png").read_bytes().startswith(b"\x89PNG")


def test_the_demo_report_has_the_papers_figures(demo):
    text = demo.report_path.read_text()
    for section in ("Version AUROC history", "Per-pathology treatment recommendations",
                    "Label exclusivity and polarized channels"):
        assert section in text
    for ident in ("auroc-history", "treatments", "channels-0", "channels-1"):
        assert f'id="{ident}"' in text


def test_a_clinical_report_under_the_compact_production_model(demo_copy, tmp_path):
    from cxr.data import phantom_dataset
    from cxr.images import write_folder
    from cxr.phantom import PhantomConfig
    from tests.decision.test_report_html import chromium_image_check

    ds = phantom_dataset(PhantomConfig(site="site-b", split="evaluation", n=6, resolution=64), workers=1)
    write_folder(ds, tmp_path / "films")
    res = runner.invoke(app, ["findings", str(tmp_path / "films" / "images"), "--site", "site-b", "--out",
                              str(tmp_path / "rep"), "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert len(body["pages"]) == 6
    for page in body["pages"][:2]:
        ok, total, widths = chromium_image_check(Path(page), tmp_path)
        assert ok == total and all(w > 0 for w in widths)
