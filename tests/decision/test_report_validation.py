"""Strict report validation through `decide ingest`: a generated corpus of malformed variants of one valid
report, and mixed files, must each exit 2 with one line naming the line and the field, write nothing,
and never exit 1 or print a traceback. Same key with other content is refused; the same report is a no-op.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from click.testing import CliRunner

from cli.app import app
from cxr import clock
from decision import error_reports
from tests import dates

runner = CliRunner()
CLI = typer.main.get_command(app)  # built once: every invoke below reuses it

VALID = {
    "model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_negatives", "metric": "recall",
    "value": 0.52, "target": 0.8, "site": "site-b", "window_start": dates.iso(dates.day(7)),
    "window_end": dates.iso(dates.day(14)), "counts": {"tp": 52, "fp": 10, "tn": 880, "fn": 48},
    "cases": [{"image_id": "00000013_005.png", "score": 0.31, "label": 1}], "source": "radiology-qa",
    "notes": "weekly QA of site-b",
}
REQUIRED = ["model", "version", "pathology", "kind", "metric", "value", "target", "site", "window_start",
            "window_end", "counts"]
STRINGS = ["model", "pathology", "metric", "site", "source", "notes"]
IDENTIFIERS = ["model", "site", "pathology", "source"]
BIG = "x" * 200_000
FUTURE = (clock.now() + timedelta(days=30)).isoformat()
NAN = "__NaN__"  # json.dumps writes these bare (NaN, Infinity): JSON's own parser must refuse them


def _set(report: dict, path: str, value) -> dict:
    r = copy.deepcopy(report)
    *parents, last = path.split(".")
    node = r
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return r


_DELETE = object()


def corpus() -> list[tuple[str, dict | str, str]]:
    """(name, report or raw line, the field the refusal must name)."""
    out: list[tuple[str, dict | str, str]] = []

    def add(name, path, value, field=None):
        out.append((name, _set(VALID, path, value), field or path))

    for f in REQUIRED:
        add(f"missing {f}", f, _DELETE)
    for f in ("tp", "fp", "tn", "fn"):
        add(f"missing counts.{f}", f"counts.{f}", _DELETE)
    add("missing cases.0.score", "cases.0.score", _DELETE)
    add("missing cases.0.image_id", "cases.0.image_id", _DELETE)
    # wrong types
    for f in STRINGS:
        for bad in (3, True, [], {"a": 1}, 1.5):
            add(f"{f} as {type(bad).__name__}", f, bad)
    for f in ("model", "pathology", "metric", "site", "kind", "window_start", "window_end"):
        add(f"{f} null", f, None)
    for f in ("version", "counts.tp", "counts.fn"):
        for bad in ("1", 1.0, True, None, [1], 1.5):
            add(f"{f} as {bad!r}", f, bad)
    for f in ("value", "target"):
        for bad in ("0.5", True, None, [0.5], {"v": 0.5}):
            add(f"{f} as {bad!r}", f, bad)
    start = dates.day(7)  # VALID's window_start
    for name, bad in (("as yyyymmdd", int(f"{start:%Y%m%d}")), ("True", True), ("'yesterday'", "yesterday"),
                      ("without a zone", f"{start:%Y-%m-%dT%H:%M:%S}"), ("month 13", f"{start.year}-13-45T00:00:00Z")):
        add(f"window_start {name}", "window_start", bad)
    add("counts as a list", "counts", [52, 10, 880, 48])
    add("cases as an object", "cases", {"image_id": "a", "score": 0.1})
    add("case label true", "cases.0.label", True)
    add("case label 2", "cases.0.label", 2)
    add("kind unknown", "kind", "bad_vibes")
    # out of range (the examples among them)
    for bad in (-1.52, 7.0, 1e30, -1e-9, 1.0000001):
        add(f"recall {bad}", "value", bad)
    add("target -3", "target", -3)
    add("target 1.5", "target", 1.5)
    add("version 0", "version", 0)
    add("version -1", "version", -1)
    for f in ("tp", "fp", "tn", "fn"):
        add(f"counts.{f} -1", f"counts.{f}", -1)
    add("recall 0.52 with tp 5, fn 99,999", "counts", {"tp": 5, "fp": 10, "tn": 880, "fn": 99_999}, "counts")
    add("case score 1.2", "cases.0.score", 1.2)
    add("case score -0.1", "cases.0.score", -0.1)
    add("window reversed", "window_end", dates.iso(dates.day(0)))
    add("window empty", "window_end", VALID["window_start"])
    add("window in the future", "window_end", FUTURE)
    add("window before 1970", "window_start", "1900-01-01T00:00:00Z")
    add("window at year 1 (+14:00)", "window_start", "0001-01-01T00:00:00+14:00")
    add("window end at year 9999", "window_end", "9999-12-31T23:59:59-14:00")
    # NaN / infinities: bare JSON tokens and an overflowing literal
    for f in ("value", "target", "cases.0.score"):
        for token in ("NaN", "Infinity", "-Infinity"):
            add(f"{f} {token}", f, f"{NAN}{token}")
        add(f"{f} 1e400", f, f"{NAN}1e400")
    # huge integers (the OverflowError of the issue)
    for f in ("version", "counts.tp", "counts.fp", "counts.tn", "counts.fn"):
        add(f"{f} 10**30", f, 10**30)
        add(f"{f} 2**31", f, 2**31)
    add("version 2**63", "version", 2**63)
    # empty and oversize strings
    for f in ("model", "pathology", "metric", "site", "source"):
        add(f"{f} empty", f, "")
    add("case image_id empty", "cases.0.image_id", "")
    for f in [*STRINGS, "cases.0.image_id"]:
        add(f"{f} 200 KB", f, BIG)
    # control, bidi, path characters in identifiers (and in the free text that reaches terminals)
    for f in IDENTIFIERS:
        for bad in ("site\x00b", "site\x1b[31mb", "site\u202eb", "site\u2066b", "a\nb", "zero\u200bwidth",
                    "../../../../etc/passwd", "a\\b"):
            add(f"{f} {bad!r}", f, bad)
    for f in ("model", "site", "source"):
        add(f"{f} with a space", f, "site b")
        add(f"{f} leading dot", f, ".hidden")
    add("pathology padded", "pathology", " Effusion")
    add("notes with ESC", "notes", "ok\x1b]8;;http://evil\x07")
    add("notes with RLO", "notes", "fine \u202egnp.exe")
    add("notes with CR", "notes", "line\roverwritten")
    add("case image_id bidi", "cases.0.image_id", "img\u202e1")
    # vocabulary: metric must exist and belong to the kind
    add("metric SQL", "metric", "'; DROP TABLE model_versions; --")
    add("metric of another kind", "metric", "fpr")
    add("metric upper case", "metric", "RECALL")
    add("auroc metric on a false_negatives report", "metric", "auroc")
    # unknown extra fields
    add("extra top-level field", "surprise", 1)
    add("extra field with a control character", "evil\x1bkey", 1, "'evil")
    add("extra counts field", "counts.tn2", 5)
    add("extra case field", "cases.0.extra", 1)
    add("too many cases", "cases", [{"image_id": f"i{i}", "score": 0.5} for i in range(501)])
    # lines that are not a report at all
    for raw in ("[]", "3", '"report"', "null", "{", '{"model": "cxr",}', "\x00\x01\x02", '{"a": ' * 5000):
        out.append((f"raw {raw[:12]!r}", raw, "report"))
    return out


def _line(report: dict | str) -> str:
    if isinstance(report, str):
        return report
    text = json.dumps(report)
    for token in ("NaN", "Infinity", "-Infinity", "1e400"):
        text = text.replace(f'"{NAN}{token}"', token)
    return text


CORPUS = corpus()


def test_the_corpus_is_big_and_its_base_is_valid():
    assert len(CORPUS) >= 100
    r = error_reports.parse_report(_line(VALID))
    assert r.value == 0.52 and r.counts.fn == 48


def _refused(path: Path, line_no: int, field: str, reg) -> None:
    before = reg.counts()
    res = runner.invoke(CLI, ["ingest", str(path)])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)  # no stray exception: exit 2 came from our handler
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith(f"error: line {line_no}: ") and f": {field}" in lines[0], (field, lines[0])
    assert len(lines[0]) < 600
    assert reg.counts() == before


@pytest.mark.parametrize(("name", "report", "field"), CORPUS, ids=[c[0] for c in CORPUS])
def test_each_malformed_variant_exits_2_naming_line_and_field(name, report, field, on_registry, tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(_line(report) + "\n", encoding="utf-8", errors="surrogatepass")
    _refused(path, 1, field, on_registry)


def _good(day: int) -> str:
    start = dates.day(7 + day)
    return _line({**VALID, "window_start": start.isoformat(), "window_end": (start + timedelta(days=1)).isoformat()})


@pytest.mark.parametrize(("position", "total", "variant"), [(1, 3, 0), (2, 3, 17), (3, 3, 60), (4, 7, 99),
                                                            (7, 7, 120)])
def test_one_bad_line_among_good_ones_refuses_the_whole_file(position, total, variant, on_registry, tmp_path):
    _name, bad, field = CORPUS[variant % len(CORPUS)]
    lines = [_good(i) for i in range(total)]
    lines[position - 1] = _line(bad)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    _refused(path, position, field, on_registry)


def test_blank_lines_keep_their_numbers(on_registry, tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n".join([_good(0), "", "   ", _line(_set(VALID, "site", "site\u202eb"))]) + "\n")
    _refused(path, 4, "site", on_registry)


def test_a_real_process_refuses_with_one_line_and_exit_2(on_registry, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(_good(0) + "\n" + _line(_set(VALID, "counts.fn", 10**30)) + "\n")
    before = on_registry.counts()
    res = subprocess.run([sys.executable, "-m", "cli", "ingest", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "line 2: counts.fn" in res.stderr
    assert on_registry.counts() == before


def test_same_key_other_content_is_refused_same_content_is_a_no_op(on_registry, tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_text(_good(10) + "\n" + _good(11) + "\n")
    res = runner.invoke(CLI, ["ingest", str(first), "--json"])
    assert res.exit_code == 0, res.output
    stored = json.loads(res.stdout)
    assert stored["created"] == 2
    after_first = on_registry.counts()
    again = runner.invoke(CLI, ["ingest", str(first), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout) == {**stored, "created": 0, "existing": 2}
    assert on_registry.counts() == after_first  # a no-op writes nothing, not even an audit event
    changed = json.loads(_good(11))
    changed["value"], changed["counts"] = 0.6, {"tp": 60, "fp": 10, "tn": 880, "fn": 40}
    path = tmp_path / "changed.jsonl"
    path.write_text(_good(12) + "\n" + json.dumps(changed) + "\n")
    res = runner.invoke(CLI, ["ingest", str(path)])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: line 2: report: ") and f"report {stored['ids'][1]} " in line
    assert "value, counts.tp, counts.fn" in line and "\n" not in line
    assert on_registry.counts() == after_first  # line 1 (new) was not written either
    notes = json.loads(_good(10))
    notes["notes"] = "amended"
    path.write_text(json.dumps(notes) + "\n")
    assert "different notes" in runner.invoke(CLI, ["ingest", str(path)]).output
    twice = tmp_path / "twice.jsonl"
    twice.write_text(_good(20) + "\n" + json.dumps({**json.loads(_good(20)), "target": 0.9}) + "\n")
    res = runner.invoke(CLI, ["ingest", str(twice)])
    assert res.exit_code == 2 and "line 2: report: same key as line 1 but different target" in res.output


def test_consistency_allows_the_rounding_a_value_shows():
    def parse(value, tp, fn):
        return error_reports.parse_report(_line({**VALID, "value": value, "counts": {**VALID["counts"], "tp": tp,
                                                                                 "fn": fn}}))

    assert parse(0.3, 1, 2).value == 0.3  # 0.333…, written with one decimal: ±0.05
    assert parse(0.33, 1, 2).value == 0.33
    assert parse(1 / 3, 1, 2).value == 1 / 3
    with pytest.raises(error_reports.InvalidInput, match="contradicts the counts"):
        parse(0.34, 1, 2)  # two decimals: ±0.005, and 0.34 is 0.0067 away
    assert parse(0.5, 0, 0).value == 0.5  # no positives: the counts say nothing about recall
    assert math.isclose(error_reports.rounding_of(0.52), 0.005) and error_reports.rounding_of(1.0) == 0.05


def test_the_schema_lists_each_kinds_metrics():
    meta = error_reports.json_schema()["properties"]["metric"]["description"]
    for kind in ("false_positives", "false_negatives", "auroc_drop", "calibration_drift", "footprint"):
        assert all(m in meta for m in error_reports.metrics_of(kind))
    assert error_reports.metrics_of("false_positives") == ["fpr", "specificity"]
    assert error_reports.metrics_of("footprint") == ["parameters", "parameter_fraction", "size_mb", "latency_ms"]
