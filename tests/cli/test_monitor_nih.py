"""`nih:DIR` on a partial folder (the normal case), and a monitoring pass over the real NIH sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from cxr.errors import InvalidInput
from cxr.nih import load_nih_metadata, match_nih_folder
from cxr.sources import open_source

runner = CliRunner()
NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-sample"
needs_sample = pytest.mark.skipif(not NIH.is_dir(), reason="the NIH sample (../shared/data/nih-sample) is absent")


@needs_sample
def test_a_partial_folder_uses_the_films_present(tmp_path):
    names = sorted(p.name for p in (NIH / "images").glob("*.png"))[:5]
    (tmp_path / "images_003" / "images").mkdir(parents=True)  # the layout of an extracted NIH archive
    for n in names:
        (tmp_path / "images_003" / "images" / n).symlink_to(NIH / "images" / n)
    (tmp_path / "images_003" / "images" / "holiday.png").write_bytes(b"not NIH")
    match = match_nih_folder(tmp_path)
    assert len(match.rows) == 5 and match.files_seen == 6 and match.metadata_rows == len(load_nih_metadata())
    assert "5 of the metadata's 112,120 rows" in match.describe()
    ds = open_source(f"nih:{tmp_path}", resolution=32, split="all")
    assert sorted(ds.image_ids) == names and ds.images([0, 4]).shape == (2, 1, 32, 32)
    meta = load_nih_metadata()
    row = list(meta.image_index).index(ds.image_ids[0])
    assert ds.labels[0].tolist() == meta.labels[row].astype(float).tolist()


def test_a_folder_with_no_nih_film_is_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(InvalidInput, match="no film of NIH ChestX-ray14"):
        match_nih_folder(tmp_path)
    res = runner.invoke(app, ["analyze", "exclusivity", "--source", f"nih:{tmp_path}"])
    assert res.exit_code == 2 and "no film of NIH" in res.output


@needs_sample
@pytest.mark.xdist_group("tiny-home")
def test_monitor_run_on_the_nih_sample_says_how_many_studies_it_read(tiny_home):
    res = runner.invoke(app, ["monitor", "run", "--source", f"nih:{NIH}", "--site", "nih-sample", "--no-treat",
                              "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    from registry import repo
    from registry.session import session_scope

    with session_scope(tiny_home.url, read_only=True) as s:
        [fb] = repo.list_datasets(s, role="feedback", site="nih-sample")
    assert body["studies"] == fb.size > 0
    assert body["reports_created"] == len(body["report_ids"]) >= 0 and body["decisions"] == []
    again = runner.invoke(app, ["monitor", "run", "--source", f"nih:{NIH}", "--site", "nih-sample", "--no-treat"])
    assert again.exit_code == 0 and f"read {fb.size} studies" in " ".join(again.stdout.split())
