"""`decide analyze exclusivity | channels | figures`, `decide findings` (and `report`, its hidden old name) and
`decide predict --version`, via the CLI."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from cli.app import app
from cxr.nih import xrv_data_dir
from cxr.spec import NIH_PATHOLOGIES
from tests import dates

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("tiny-home")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args: str):
    return runner.invoke(app, list(args))


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_exclusivity_json_reproduces_pandas_jaccard_on_the_shipped_nih_metadata():
    body = _json(_run("analyze", "exclusivity", "--json"))
    assert body["n"] == 112_120 and body["names"] == list(NIH_PATHOLOGIES)
    df = pd.read_csv(xrv_data_dir() / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    has = df["Finding Labels"].str.get_dummies(sep="|").astype(bool)  # one column per exact label name
    got = {(p["a"], p["b"]): p["jaccard"] for p in body["pairs"]}
    assert len(got) == 91
    for a, b in itertools.combinations(NIH_PATHOLOGIES, 2):
        assert got[(a, b)] == pytest.approx((has[a] & has[b]).sum() / (has[a] | has[b]).sum(), abs=1e-12)
    assert got[("Cardiomegaly", "Hernia")] == pytest.approx(0.0023, abs=5e-5)


@pytest.mark.slow  # 16 s on 2 busy cores (renders phantom films)
def test_exclusivity_table_plot_and_a_folder_source(tmp_path):
    res = _run("analyze", "exclusivity", "--show", "3", "--plot", str(tmp_path / "j.png"))
    assert res.exit_code == 0, res.output
    assert "most exclusive pairs" in res.stdout and "Hernia" in res.stdout
    assert (tmp_path / "j.png").read_bytes().startswith(PNG_MAGIC)
    bad = _run("analyze", "exclusivity", "--plot", str(tmp_path / "j.svg"))
    assert bad.exit_code == 2 and "plot" in bad.output
    out = tmp_path / "ph"
    assert _run("phantom", "--out", str(out), "--n", "30", "--resolution", "32").exit_code == 0
    body = _json(_run("analyze", "exclusivity", "--source", f"folder:{out}", "--json"))
    labels = pd.read_csv(out / "labels.csv")
    assert body["n"] == 30
    assert body["positives"]["Cardiomegaly"] == int(labels["Cardiomegaly"].sum())


def test_channels_prints_the_four_categories_and_the_same_numbers_in_json(tiny_home, tmp_path):
    res = _run("analyze", "channels", "cxr@production", "--plot", str(tmp_path / "c.png"))
    assert res.exit_code == 0, res.output
    for cat in ("Perfect", "Legitimate", "Mixed", "Conflict"):
        assert cat in res.stdout
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    body = _json(_run("analyze", "channels", "cxr@production", "--json"))
    assert body["version"] == "cxr:1" and set(body["counts"]) >= {"Perfect", "Legitimate", "Mixed", "Conflict"}
    assert sum(body["counts"].values()) == len(body["channels"])
    for c in body["channels"]:
        assert c["positive"] != c["negative"] and c["positive_weight"] > 0 > c["negative_weight"]
    flat = " ".join(res.stdout.replace("│", " ").split())  # the table's cells, in reading order
    for cat, n in body["counts"].items():  # the same numbers in the table: category, rule, count, share, paper
        assert re.search(rf"{cat} .*? {n} \d+% {body['paper_counts'][cat]}", flat), cat
    strict = _json(_run("analyze", "channels", "cxr@production", "--min-weight", "1000", "--json"))
    assert strict["channels"] == []


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = PNG_MAGIC + bytes(60)
    files = {"corrupt.png": good, "notes.txt": b"not a film\n", "empty.png": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {n: tmp_path / n for n in files}


@pytest.mark.parametrize("which", ["corrupt.png", "notes.txt", "empty.png"])
def test_findings_and_predict_refuse_an_unreadable_file_with_exit_2_and_one_line(tiny_home, tmp_path, which):
    bad = _bad_files(tmp_path)[which]
    for cmd in (["findings", str(bad), "--out", str(tmp_path / "r.html")],
                ["predict", str(bad), "--version", "cxr@production"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(bad) in res.output.replace("\n", "") and "Traceback" not in res.output


@pytest.mark.slow  # 16 s on 2 busy cores (about 5 s quiet)
def test_findings_on_a_dicom_and_a_batch_with_keep_going(tiny_home, tmp_path):
    dcm = get_testdata_file("6154")
    body = _json(_run("findings", dcm, "--out", str(tmp_path / "one.html"), "--json"))
    assert body["pages"] == [str(tmp_path / "one.html")] and "not a diagnosis" in (tmp_path / "one.html").read_text()
    bad = _bad_files(tmp_path)["corrupt.png"]
    res = _run("findings", dcm, str(bad), "--out", str(tmp_path / "batch"), "--keep-going", "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert [f[0] for f in out["failed"]] == [str(bad)] and len(out["pages"]) == 1
    assert (tmp_path / "batch" / "index.html").is_file()


def _phantom_film(tmp_path: Path) -> str:
    """One site-a phantom film at the tiny model's 32 px: like its calibration split, so it is scored."""
    from cxr.data import phantom_dataset
    from cxr.images import write_folder
    from cxr.phantom import PhantomConfig

    write_folder(phantom_dataset(PhantomConfig(site="site-a", split="evaluation", n=1, resolution=32), workers=1),
                 tmp_path / "ph")
    return str(next((tmp_path / "ph" / "images").glob("*.png")))


def test_predict_with_a_version_applies_its_operating_points(tiny_home, tmp_path, wide_console):
    from decision.scoring import load_version

    dcm = _phantom_film(tmp_path)
    rows = _json(_run("predict", dcm, "--version", "cxr@production", "--json"))
    assert not rows[0]["ood"]["outside"] and rows[0]["withheld"] is None
    thr = load_version("cxr@production").thresholds
    assert rows[0]["version"] == "cxr:1"
    for name, s in rows[0]["scores"].items():
        assert s["threshold"] == thr.get(name) and s["validated"] == (thr.get(name) is not None)
        assert s["positive"] == (None if s["threshold"] is None else s["probability"] >= s["threshold"])
    # the validated outputs lead (positives first), the rest follow and are listed apart
    order = list(rows[0]["scores"])
    unvalidated = [n for n in order if thr.get(n) is None]
    assert unvalidated and order[-len(unvalidated):] == unvalidated == rows[0]["not_validated"]
    called = [rows[0]["scores"][n]["positive"] for n in order if thr.get(n) is not None]
    assert called == sorted(called, reverse=True)
    # wide enough that no header wraps (the table has an "outside what cxr:1 was validated on?" column too)
    table = runner.invoke(app, ["predict", dcm, "--version", "cxr@production"], env={"COLUMNS": "300"}).stdout
    assert "findings at the operating points" in table and f"{len(unvalidated)} output(s) without" in table
    assert not any(n in table for n in unvalidated)
    assert all(n in _run("predict", dcm, "--version", "cxr@production", "--all").stdout for n in unvalidated)
    bad = _bad_files(tmp_path)["empty.png"]
    res = _run("predict", dcm, str(bad), "--version", "cxr@production", "--keep-going", "--json")
    assert res.exit_code == 1
    rows = json.loads(res.stdout)
    assert rows[0]["scores"] and rows[1] == {"path": str(bad), "error": f"{bad}: empty file (0 bytes)", "scores": None}
    both = _run("predict", dcm, "--version", "cxr@production", "--weights", "w.safetensors")
    assert both.exit_code == 2 and "exactly one" in both.output


def test_predict_and_findings_withhold_a_lateral_cspine_film(tiny_home, tmp_path):
    """pydicom's `6154` is a real CR, but a lateral cervical-spine film: no chest finding is called on it."""
    cr = get_testdata_file("6154")
    [row] = _json(_run("predict", cr, "--version", "cxr@production", "--json"))
    assert row["ood"]["flags"][:2] == ["not_chest", "not_frontal"]
    assert row["withheld"] == ("not scored as a chest film: BodyPartExamined CSPINE is not CHEST; ViewPosition LL "
                               "is a lateral view: the model was validated on frontal (AP/PA) films")
    assert all(s["positive"] is None for s in row["scores"].values())
    body = _json(_run("findings", cr, "--out", str(tmp_path / "cr.html"), "--json"))
    [study] = body["studies"]
    assert study["withheld"] == row["withheld"] and study["ood"]["flags"] == row["ood"]["flags"]
    assert study["findings"] == study["excluded"] == study["others"] == []
    page = (tmp_path / "cr.html").read_text()
    assert "id='ood-banner'" in page and "BodyPartExamined CSPINE is not CHEST" in page
    assert "No finding is shown" in page and "<h2>Findings</h2>" not in page and "not a diagnosis" in page
    table = _run("findings", cr, "--out", str(tmp_path / "cr2.html"))
    assert "no findings — not scored as a chest film" in " ".join(table.stdout.split())


@pytest.mark.slow  # 18 s on 2 busy cores
def test_findings_from_an_error_reports_cases(tiny_home, tmp_path):
    from decision.error_reports import ingest, parse_report
    from registry import repo
    from registry.entities import DatasetRole
    from registry.session import session_scope

    with session_scope(tiny_home.url, read_only=True) as s:
        [fb] = repo.list_datasets(s, role=DatasetRole.feedback, site="site-b")
    from decision.catalog import Catalog

    ids = list(Catalog(tiny_home.home).dataset(fb).image_ids[:2])
    rep = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1},
           "cases": [{"image_id": i, "score": 0.9, "label": 0} for i in [*ids, "elsewhere"]]}
    with session_scope(tiny_home.url) as s:
        rid = ingest(s, [parse_report(rep)]).ids[0]
    body = _json(_run("findings", "--from-report", str(rid), "--out", str(tmp_path / "cases"), "--json"))
    assert [s["study"] for s in body["studies"]] == ids and body["not_found"] == ["elsewhere"]
    assert len(body["pages"]) == 2 and body["version"] == "cxr:1"
    assert "case of error report" in (tmp_path / "cases" / f"{Path(body['pages'][0]).name}").read_text()


@pytest.mark.slow  # 15 s on 2 busy cores
def test_figures_from_the_registry(tiny_home, tmp_path):
    body = _json(_run("analyze", "figures", "--out", str(tmp_path / "fig"), "--json"))
    assert {"jaccard", "channels", "auroc-history"} <= set(body["figures"])
    for path in body["figures"].values():
        assert Path(path).read_bytes().startswith(PNG_MAGIC)


def test_every_new_command_has_help():
    for cmd in (["analyze", "exclusivity"], ["analyze", "channels"], ["analyze", "figures"], ["findings"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output


def test_report_is_a_hidden_alias_of_findings_that_says_it_is_renamed(tiny_home, tmp_path):
    from cli.cmd_analyze import RENAMED

    listed = runner.invoke(app, ["--help"]).stdout
    assert " findings " in listed and not re.search(r"│ report\b", listed)
    bad = _bad_files(tmp_path)["notes.txt"]
    new, old = (runner.invoke(app, [name, str(bad), "--out", str(tmp_path / "r.html")])
                for name in ("findings", "report"))
    assert old.exit_code == new.exit_code == 2 and old.stdout == new.stdout
    assert old.stderr.splitlines() == [RENAMED, *new.stderr.splitlines()]
    assert RENAMED.startswith("`decide report` is now `decide findings`") and RENAMED not in new.stderr
    helps = [runner.invoke(app, [name, "--help"]).stdout.splitlines() for name in ("findings", "report")]
    assert [line for line in helps[0] if "Usage:" not in line] == [line for line in helps[1] if "Usage:" not in line]


@pytest.mark.slow  # a real `decide` process: 21 s on 2 busy cores, most of it importing the app
def test_one_real_process():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["decide", "analyze", "exclusivity", "--json"], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    body = json.loads(out)
    assert np.isclose(body["jaccard"][NIH_PATHOLOGIES.index("Hernia")][NIH_PATHOLOGIES.index("Cardiomegaly")],
                      7 / 2996)
