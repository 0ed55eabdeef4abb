"""No re-try without new evidence: a treatment that failed the gate for the same (version, site, pathology,
kind) is skipped, naming the run, until new feedback for the site is registered or the policy changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from decision.retry import Attempt, not_retried
from policies import load_policy, parse_policy
from registry import repo
from registry.entities import RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentDeclined, TreatmentResult

T0 = datetime(2030, 1, 1, tzinfo=UTC) - timedelta(days=3000)  # only differences matter


def _attempt(run_id=17, treatment="head_retrain", failed=True, digest="d1", at=T0, **kw) -> Attempt:
    base = dict(version_id=3, version="cxr:3", site="site-b", pathology="Atelectasis", kind="false_positives")
    base.update(kw)
    return Attempt(run_id, treatment, started_at=at, policy_digest=digest, failed_gate=failed,
                   reasons=("tp_loss",) if failed else (), **base)


def _rule(attempts, feedback=(), digest="d1", **kw):
    q = dict(version_id=3, site="site-b", pathology="Atelectasis", kind="false_positives")
    q.update(kw)
    return not_retried(attempts, policy_digest=digest, feedback_at=list(feedback), **q)


def test_a_gate_failure_blocks_the_same_question_and_names_the_run():
    out = _rule([_attempt()])
    assert list(out) == ["head_retrain"]
    assert out["head_retrain"].sentence == ("head_retrain failed on cxr:3 at site-b for Atelectasis false_positives "
                                            "in run 17 (tp_loss); no new feedback and the same policy since: "
                                            "not re-tried")
    assert out["head_retrain"].to_json()["run"] == 17


@pytest.mark.parametrize("other", [dict(version_id=4), dict(site="site-a"), dict(pathology="Effusion"),
                                   dict(kind="false_negatives")])
def test_another_version_site_pathology_or_kind_is_another_question(other):
    assert _rule([_attempt()], **other) == {}


def test_new_feedback_or_another_policy_lifts_the_block_and_older_feedback_does_not():
    assert _rule([_attempt()], feedback=[T0 - timedelta(days=1)]) != {}
    assert _rule([_attempt()], feedback=[T0 + timedelta(seconds=1)]) == {}
    assert _rule([_attempt()], digest="d2") == {}


def test_only_the_newest_run_of_a_treatment_counts_and_errors_do_not_block():
    later_ok = _attempt(run_id=18, failed=False, at=T0 + timedelta(hours=1))
    assert _rule([_attempt(), later_ok]) == {}
    assert _rule([later_ok, _attempt(run_id=19, at=T0 + timedelta(hours=2))])["head_retrain"].run_id == 19
    assert _rule([_attempt(failed=False)]) == {}  # an error, a decline or an abandoned run answered nothing


# -- through the engine, on a real registry ----------------------------------------------------------


class Fails:
    """Calls everything positive at the site: FPR 1, the gate rejects it (target_fixed)."""

    name, fixes, head_only = "toy_threshold", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        return TreatmentResult(thresholds={**ctx.thresholds, ctx.report.pathology: 0.0})


class Declines:
    name, fixes, head_only = "toy_decline", frozenset({"false_positives"}), True

    def applicable(self, report, planning):
        return True, "always"

    def apply(self, ctx):
        raise TreatmentDeclined("nothing to do")


def _policy(**learning):
    raw = load_policy().model_dump(mode="json")
    raw["treatments"] = {"toy_threshold": {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9},
                         "toy_decline": {"prior_cost": 1, "fixes": ["false_positives"], "p_success_default": 0.9}}
    raw["learning"].update(learning)
    return parse_policy(raw)


def _report(url, day):
    rep = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
           "value": 0.99, "target": 0.5, "site": "site-b",
           "window_start": dates.day(day), "window_end": dates.day(day + 1),
           "counts": {"tp": 5, "fp": 99, "tn": 1, "fn": 1}, "cases": []}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _engine(home, **learning):
    plugins = {"toy_threshold": Fails(), "toy_decline": Declines()}
    return Engine(home.url, home.home, _policy(**learning), plugins=plugins)


def _candidate(engine, name):
    (p,) = engine.plan_open()
    return p, next(c for c in p.plan.candidates if c.treatment == name)


@pytest.mark.xdist_group("tiny-home")
def test_the_engine_skips_a_failed_treatment_until_new_feedback_arrives(tiny_home):
    engine = _engine(tiny_home)
    _report(tiny_home.url, 1)
    first = engine.run_pass().decisions[0]
    failed = next(r for r in first.runs if r.treatment == "toy_threshold")
    assert failed.outcome == RunOutcome.rejected
    assert "target_fixed" in {c.name.split("@")[0] for c in failed.gate.failed()}

    _report(tiny_home.url, 3)
    p, cand = _candidate(engine, "toy_threshold")
    ref = p.parent.ref
    assert not cand.applicable
    assert cand.reason == (f"toy_threshold failed on {ref} at site-b for Effusion false_positives in run "
                           f"{failed.run_id} (target_fixed); no new feedback and the same policy since: not re-tried")
    assert "Skipped on the evidence: toy_threshold: toy_threshold failed on" in p.plan.rationale
    assert p.plan.chosen.treatment == "toy_decline"  # a decline answered nothing: it is asked again
    assert _candidate(_engine(tiny_home, retry_failed_without_new_evidence=True), "toy_threshold")[1].applicable
    assert _candidate(_engine(tiny_home, other_sites_weight=0.5), "toy_threshold")[1].applicable  # another policy

    with session_scope(tiny_home.url) as s:  # a new labelled week at site-b
        repo.get_or_create_dataset(s, "feedback-site-b-new", "feedback", "f" * 64, 120,
                                   {"kind": "phantom", "site": "site-b", "split": "feedback", "n": 120})
    _, cand = _candidate(engine, "toy_threshold")
    assert cand.applicable and cand.reason == "applicable"
