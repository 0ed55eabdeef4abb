"""One vocabulary: the issue-kind strings are written in `cxr/kinds.py` and nowhere else in the code.

Every other module imports `IssueKind` (and the metric rules) from there, so adding a kind touches that
module, a migration (the registry stores kinds as an SQL enum) and the code that handles the new kind.
The check reads every module's tokens: a string literal whose whole value is a kind name is code that
spells the vocabulary again. Prose that mentions a kind (docstrings, help and error texts, examples)
is a longer string and is left alone; migrations are frozen history and are not scanned.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

from cxr.kinds import HEADLINE_METRIC, LABELLED_KINDS, METRICS, IssueKind, lower_is_better, metrics_of
from registry.entities import ReportEntity

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cxr", "decision", "treatments", "registry", "policies", "cli")
HOME = ROOT / "cxr" / "kinds.py"
KIND_NAMES = {k.value for k in IssueKind}
#: other nouns that happen to share a kind's spelling, each written once, with what it names
HOMONYMS = {
    ("treatments/footprint_base.py", '"footprint"'): "the artifact key of a candidate's measured footprint",
    ("registry/repo_versions.py", '"footprint"'): "a version's `footprint` field, passed on to its child",
}


def _kind_literals(path: Path) -> list[str]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type != tokenize.STRING or tok.string.lstrip("rRbBuU")[:1] not in "\"'":
            continue  # f-strings (prose with fields) and byte strings are not the vocabulary
        try:
            value = ast.literal_eval(tok.string)
        except (ValueError, SyntaxError):
            continue
        if value in KIND_NAMES and (str(path.relative_to(ROOT)), tok.string) not in HOMONYMS:
            found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string}")
    return found


def test_the_kind_strings_are_written_in_one_module():
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if p != HOME]
    assert len(files) > 100
    stray = [hit for p in files for hit in _kind_literals(p)]
    assert stray == [], "issue kinds spelled outside cxr/kinds.py (import IssueKind instead):\n" + "\n".join(stray)


def test_the_check_would_see_a_stray_kind(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Reports of kind false_positives are common."""\nKIND = "false_positives"\n'
                      'TEXT = f"{KIND} seen"\nOTHER = "false_positives_rate"\n')
    assert [h.split(": ", 1)[1] for h in _kind_literals_at(sample)] == ['"false_positives"']


def _kind_literals_at(path: Path) -> list[str]:
    global ROOT
    saved, ROOT = ROOT, path.parent
    try:
        return _kind_literals(path)
    finally:
        ROOT = saved


def test_every_metric_names_a_kind_and_every_labelled_kind_a_metric_of_its_own():
    assert {rule.kind for rule in METRICS.values()} == set(IssueKind)
    for kind in LABELLED_KINDS:
        assert HEADLINE_METRIC[kind] in metrics_of(kind)
    assert lower_is_better("fpr") and not lower_is_better("recall") and not lower_is_better("ppv")
    # a figure no rule names takes its kind's direction; the evaluation's own figures are better high
    assert [lower_is_better("mce", k) for k in IssueKind] == [True, False, False, True, True, False]
    assert not any(lower_is_better("ppv", k) for k in IssueKind) and not lower_is_better("mce")


@pytest.mark.parametrize("kind", list(IssueKind))
def test_a_kind_is_its_string_wherever_it_goes(kind):
    """A StrEnum member equals, hashes and serialises as its plain string: stored, exported and compared
    with text from a JSON line alike."""
    import json

    assert kind == kind.value and {kind.value: 1}[kind] == 1 and json.dumps(kind) == json.dumps(kind.value)
    assert ReportEntity.__annotations__["kind"] in ("IssueKind", IssueKind)
