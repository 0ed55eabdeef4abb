"""Readable at 80 columns: tables fit (as they are, wrapped between words, or as one block per row) and never
cut a cell ("Atele…"); the demo summary at 80 columns keeps every name whole; progress is plain lines when
stderr is not a terminal, bars when it is."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from cli.app import app
from cli.progress import batch_progress, step_reporter, train_progress
from cli.rich_console import FittingConsole, fit_table
from tests import dates

runner = CliRunner()
NAMES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
         "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
         "Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Fracture"]
WINDOW = f"{dates.ymd(dates.day(0))}…{dates.ymd(dates.day(7))}"  # a report's window as a table shows it
TREATMENTS = ["threshold_calibration", "surgical_correction", "head_retrain", "f_reoptimization",
              "augmentation_retrain", "full_retrain"]


def _render(*renderables, width: int = 80) -> str:
    con = FittingConsole(file=io.StringIO(), width=width, color_system=None)
    for r in renderables:
        con.print(r)
    return con.file.getvalue()


def _whole(text: str, *names: str) -> None:
    """No cut cell, no line wider than the terminal, every word of every name intact on some line."""
    assert "…" not in re.sub(r"\d{4}-\d\d-\d\d…\d{4}-\d\d-\d\d", "", text)  # a window's own … is data
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(re.findall(r"[^\s│┃·•]+", text))
    for name in names:
        for word in name.split():
            assert word in words, (word, text)


def _reports_table(rows: int) -> Table:
    t = Table(title=f"{rows} report(s)")
    for c in ("id", "version", "pathology", "kind", "metric", "value", "target", "site", "window", "status"):
        t.add_column(c, justify="right" if c in ("id", "value", "target") else "left")
    for i in range(rows):
        t.add_row(str(i + 1), "cxr:1", NAMES[i % len(NAMES)], "false_positives", "fpr", "0.553", "0.200", "site-b",
                  WINDOW, "resolved (worker-1)")
    return t


def test_a_table_that_fits_is_left_alone():
    t = Table("pathology", "threshold")
    t.add_row("Cardiomegaly", "0.41")
    assert fit_table(t, Console(width=80)) is t and t.columns[0].width is None


def test_a_wide_table_wraps_between_words_and_keeps_names_whole():
    t = Table(title="plan")
    for c in ("#", "treatment", "cost", "reason"):
        t.add_column(c)
    for i, name in enumerate(TREATMENTS):
        t.add_row(str(i), name, "2.0", "needs approval by policy: the expected cost exceeds the ceiling the operator "
                                       "set for unattended runs on noninferiority[Pleural_Thickening]")
    out = _render(t)
    assert "┃ treatment" in out  # still a table
    _whole(out, *TREATMENTS, "noninferiority[Pleural_Thickening]")


def test_a_table_too_wide_to_wrap_becomes_one_block_per_row():
    out = _render(_reports_table(len(NAMES)))
    assert "one block each" in out and out.count("• id ") == len(NAMES)
    _whole(out, *NAMES, "false_positives", WINDOW)
    assert WINDOW in out  # a cell's own ellipsis survives; nothing else is cut
    assert "pathology Enlarged Cardiomediastinum" in out  # a column's name and value stay together


def test_rich_would_have_cut_the_names():
    plain = Console(file=io.StringIO(), width=80, color_system=None)
    plain.print(_reports_table(3))
    assert "…" in plain.file.getvalue().replace(WINDOW, "")  # what this module prevents


@pytest.fixture
def narrow_registry(tmp_path, monkeypatch):
    from decision import error_reports
    from registry.session import dispose_engines, init_registry, session_scope
    from tests.registry import factories as f

    monkeypatch.setenv("COLUMNS", "80")
    init_registry()
    with session_scope() as s:
        f.version(s, pathologies=NAMES)
        error_reports.ingest(s, [error_reports.parse_report(f.report(pathology=p, day=i)) for i, p in enumerate(NAMES)])
    dispose_engines()


def test_decide_reports_at_80_columns(narrow_registry):
    res = runner.invoke(app, ["reports"])
    assert res.exit_code == 0, res.output
    _whole(res.stdout, *NAMES, "false_positives")
    assert len(json.loads(runner.invoke(app, ["reports", "--json"]).stdout)) == len(NAMES)


def _demo_like() -> tuple[dict, dict]:
    """The shapes `decide demo` renders (decision.demo.summary_rows and the export), with every long name."""
    reports = [{"id": i + 1, "model": "cxr", "version": 1, "site": "site-b", "pathology": p,
                "kind": "false_negatives" if i % 2 else "false_positives", "metric": "recall" if i % 2 else "fpr",
                "value": 0.5531, "target": 0.8, "window_start": dates.day(0).isoformat(), "status": "resolved"}
               for i, p in enumerate(NAMES)]
    gate = "rejected: target_fixed: Cardiomegaly fpr 0.412 > 0.200; noninferiority[Pleural_Thickening] lo −0.031"
    decisions = [{"id": 1, "report_ids": [1], "status": "succeeded", "rationale": "Report 1: Cardiomegaly "
                  "false_positives (fpr 0.553 vs 0.2). Cheapest expected total cost first.",
                  "candidates": [{"rank": i, "treatment": t, "expected_cost": 1.0 + i, "p_success": 0.5,
                                  "score": 2.0 + i, "needs_approval": t.endswith("retrain") and i > 3,
                                  "applicable": True} for i, t in enumerate(TREATMENTS)]}]
    runs = [{"id": 1, "decision_id": 1, "treatment": "threshold_calibration", "outcome": "rejected",
             "metrics": {"gate": {"summary": gate}}, "error_text": ""},
            {"id": 2, "decision_id": 1, "treatment": "head_retrain", "outcome": "accepted", "metrics": {},
             "error_text": ""}]
    versions = [{"id": 1, "model": "cxr", "version": 1, "status": "archived", "treatment_run_id": None,
                 "parent_id": None},
                {"id": 2, "model": "cxr", "version": 2, "status": "production", "treatment_run_id": 2, "parent_id": 1}]
    datasets = {f"{site}-evaluation": {"site": site, "version": "cxr:2", "cardiomegaly_fpr": 0.14,
                                       "cardiomegaly_fpr_baseline": 0.55, "cardiomegaly_recall": 0.86,
                                       "worst_other_auroc_delta_lo": -0.012,
                                       "worst_other_pathology": "Enlarged Cardiomediastinum",
                                       "underpowered": ["Emphysema"] if site == "site-b" else []}
                for site in ("site-a", "site-b")}
    data = {"home": "/tmp/demo-home", "database": "sqlite:////tmp/demo-home/registry.db", "baseline": "cxr:1",
            "production": "cxr:2", "trained_now": True,
            "timings": {"total_s": 117.0, "data_s": 6.5, "train_s": 49.0, "monitor_and_treat_s": 56.0},
            "new_site": {"site": "site-e", "skipped": "", "early_block_fix": {"version": "cxr:2", "block": 1,
                                                                               "serving": "production@site-e"}},
            "acceptance": {"final": "cxr:2", "baseline": "cxr:1", "sites": ["site-b", "site-e"],
                           "datasets": datasets, "target_fpr": 0.2,
                           "margin": 0.02, "cardiomegaly_fpr_at_or_under_target": True, "others_within_margin": True},
            "audit": {"ok": True, "checked": 412}, "report_html": "/tmp/demo-home/report.html"}
    return data, {"reports": reports, "decisions": decisions, "runs": runs, "versions": versions}


def _demo_at_80(data: dict, export: dict, monkeypatch) -> str:
    from cli import cmd_demo
    from cli.output import console

    monkeypatch.setenv("COLUMNS", "80")
    with console.capture() as cap:
        cmd_demo._render(data, export)
    return cap.get()


def test_the_demo_summary_at_80_columns_keeps_every_name(monkeypatch):
    data, export = _demo_like()
    out = _demo_at_80(data, export, monkeypatch)
    _whole(out, *NAMES, *TREATMENTS, "false_positives", "false_negatives", "noninferiority[Pleural_Thickening]")
    flat = " ".join(out.replace("│", " ").split())
    assert "site-e: input-level shift fixed by re-training an early block (cxr:2, block 1, production@site-e)" in flat
    assert "underpowered with no significant harm: Emphysema at site-b" in flat


def test_a_new_site_with_nothing_to_fix_is_said_not_failed(monkeypatch):
    data, export = _demo_like()
    why = "no report: cxr:2 meets the audited SLO at site-e (Cardiomegaly FPR 0.081)"
    data["new_site"] = {"site": "site-e", "skipped": why, "early_block_fix": None}
    flat = " ".join(_demo_at_80(data, export, monkeypatch).replace("│", " ").split())
    assert f"✔ site-e: its first labelled week ({why})" in flat
    assert "input-level shift fixed" not in flat
    data["new_site"]["skipped"] = "already replayed"  # a re-run: nothing said about the chapter
    assert "site-e:" not in " ".join(_demo_at_80(data, export, monkeypatch).split())


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_the_real_demo_summary_at_80_columns(demo, monkeypatch):
    from decision.demo import summary_rows

    out = _demo_at_80(summary_rows(demo), demo.export, monkeypatch)
    shown = {r["pathology"] for r in demo.export["reports"]} | {
        c["treatment"] for d in demo.export["decisions"] for c in d["candidates"] if c["applicable"]}
    _whole(out, *shown)


def test_progress_is_plain_lines_off_a_terminal_and_bars_on_one():
    plain = Console(file=io.StringIO(), width=80, color_system=None)
    with train_progress(3, console=plain) as cb:
        for e in (1, 2, 3):
            cb("batch", 1, 2, {"epoch": e, "loss": 0.5})
            cb("epoch", e, 3, {"epoch": e, "loss": 0.5 / e, "seconds": 1.5, "images_per_s": 800.0})
    with batch_progress("features", console=plain) as cb:
        for i in range(1, 4):
            cb(i * 100, 300)
    with step_reporter(console=plain) as say:
        say("train", "epoch 1: loss 0.5")
    lines = plain.file.getvalue().splitlines()
    assert lines[:3] == ["epoch 1/3: loss 0.5000, 800 img/s, 1.5s", "epoch 2/3: loss 0.2500, 800 img/s, 1.5s",
                         "epoch 3/3: loss 0.1667, 800 img/s, 1.5s"]
    assert "features: 100/300" in lines and "features: 300/300" in lines
    assert lines[-1].endswith("train epoch 1: loss 0.5")
    tty = Console(file=io.StringIO(), width=80, force_terminal=True)
    with train_progress(2, console=tty) as cb:
        cb("epoch", 1, 2, {"epoch": 1, "loss": 0.5, "seconds": 1.0, "images_per_s": 10.0})
    assert "epochs" in tty.file.getvalue() and "epoch 1/2" not in tty.file.getvalue()
