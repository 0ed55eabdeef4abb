"""Sequestered test data, checked: a treatment that saw patients of an evaluation set is refused, and the
run records the patients it trained on, each evaluation set's patients and the authorised baseline."""

from __future__ import annotations

import pytest

from cxr.data import phantom_dataset
from cxr.phantom import PhantomConfig
from decision.catalog import record_dataset
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from decision.gate_lineage import patient_digests
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentResult

EVAL_B = "phantom-site-b-evaluation"


def _report(url) -> int:
    rep = {"model": "cxr", "version": 1, "pathology": "Infiltration", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _policy(name: str):
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {name: {"prior_cost": 1, "fixes": ["false_positives"], "p_success_default": 0.5,
                                "needs_approval": False, "params": {}}}
    return parse_policy(raw)


class Toy:
    """Keeps the parent's operating points; `planted`: patients it says it trained on besides its context."""

    head_only, fixes = True, frozenset({"false_positives"})

    def __init__(self, name: str, planted: frozenset[str] | None = None) -> None:
        self.name, self.planted = name, planted

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        moved = {**ctx.thresholds, "Infiltration": 0.99}
        return TreatmentResult(thresholds=moved, notes="toy", training_patients=self.planted)


def _eval_b():
    return phantom_dataset(PhantomConfig(site="site-b", split="evaluation", n=300, resolution=32), workers=1)


def _run(tiny_home, plugin):
    _report(tiny_home.url)
    engine = Engine(tiny_home.url, tiny_home.home, _policy(plugin.name), plugins={plugin.name: plugin})
    [run] = engine.run_pass().decisions[0].runs
    with session_scope(tiny_home.url, read_only=True) as s:
        stored = repo.get_run(s, run.run_id)
    return run, stored, {c["name"]: c for c in stored.metrics["gate"]["checks"]}


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_treatment_that_trained_on_evaluation_patients_is_refused(tiny_home):
    ev = _eval_b()
    planted = frozenset(ev.patient_ids[:40])  # some of site-b's evaluation patients
    run, stored, checks = _run(tiny_home, Toy("planted", planted))
    check = checks[f"sequestration@{EVAL_B}"]
    assert not check["passed"] and check["value"] == float(len(planted)) and check["limit"] == 0.0
    assert check["detail"].startswith(f"{len(planted)} of the evaluation set's {len(set(ev.patient_ids))} patients")
    assert checks["sequestration@phantom-site-a-evaluation"]["passed"]  # site-a's set shares none of them
    assert run.outcome is RunOutcome.rejected  # (the summary lists the first failed checks only: the checks above)
    record = stored.metrics["sequestration"]
    assert set(record["training_patients_sha256"]) >= patient_digests(planted)
    by_set = {e["dataset"]: e for e in record["evaluation_sets"]}
    assert by_set[EVAL_B]["overlap"] == len(planted) and by_set[EVAL_B]["patients"] == len(set(ev.patient_ids))


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_feedback_set_drawn_from_the_evaluation_patients_is_caught_too(tiny_home):
    """The leak in the data, not the treatment: site-b 'feedback' registered from its evaluation split's rows."""
    leak = _eval_b().subset(range(60), name="site-b-feedback-leak")
    src = {"kind": "phantom", "site": "site-b", "split": "evaluation", "n": 300, "resolution": 32, "seed": 0,
           "missing_sign_rate": 0.1, "rows": [0, 60]}
    with session_scope(tiny_home.url) as s:
        record_dataset(s, leak, "feedback", src)
    run, _, checks = _run(tiny_home, Toy("honest"))
    check = checks[f"sequestration@{EVAL_B}"]
    assert not check["passed"] and check["value"] == float(len(set(leak.patient_ids)))
    assert run.outcome is RunOutcome.rejected


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_clean_run_records_its_patients_and_the_authorised_baseline(tiny_home):
    _, stored, checks = _run(tiny_home, Toy("clean"))
    assert checks[f"sequestration@{EVAL_B}"]["passed"] and checks[f"sequestration@{EVAL_B}"]["value"] == 0.0
    base = [c for n, c in checks.items() if n.startswith("baseline_noninferiority[")]
    assert base and all("vs authorised baseline cxr:1 (override by" in c["detail"] for c in base)
    assert stored.metrics["authorised_baseline"]["site-b"]["ref"] == "cxr:1"
    record = stored.metrics["sequestration"]
    assert record["training_patients"] == len(record["training_patients_sha256"]) > 0
    assert {e["overlap"] for e in record["evaluation_sets"]} == {0}
