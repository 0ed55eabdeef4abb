"""A backbone treatment that runs out of its time budget still proposes a candidate from the weights it has,
the candidate is gated like any other, and the run's record says how many epochs ran and why it stopped
(the budget's clock is injected: each epoch "takes" 100 s, nothing waits)."""

from __future__ import annotations

import pytest

import cxr.train
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import RunOutcome
from registry.export import export_all
from registry.session import session_scope
from tests import dates
from tests.ticking import Ticking
from treatments.plugins import load_treatments


def _report(url) -> int:  # Infiltration, the commonest finding: enough calibration positives at site-b
    rep = {"model": "cxr", "version": 1, "pathology": "Infiltration", "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _only(name: str, **params):
    """The bundled policy with `name` alone, approved in advance, and `params` over its bundled ones."""
    raw = load_policy().model_dump(mode="json")
    keep = raw["treatments"][name]
    raw["treatments"] = {name: {**keep, "needs_approval": False, "params": {**keep.get("params", {}), **params}}}
    return parse_policy(raw)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_run_stopped_by_its_budget_is_gated_and_records_why(tiny_home, monkeypatch):
    monkeypatch.setattr(cxr.train, "budget_clock", Ticking(100))
    _report(tiny_home.url)
    plugin = load_treatments().treatments["f_reoptimization"]
    policy = _only("f_reoptimization", epochs=4, time_budget_s=150)
    summary = Engine(tiny_home.url, tiny_home.home, policy, plugins={"f_reoptimization": plugin}).run_pass()
    [run] = summary.decisions[0].runs
    assert run.outcome in (RunOutcome.accepted, RunOutcome.rejected), run.error  # gated, not failed
    assert run.gate is not None and run.version is not None
    assert "stopped after 2 of" in run.notes and "budget: 150 s reached after 2 of" in run.notes
    with session_scope(tiny_home.url, read_only=True) as s:
        [rec] = repo.list_runs(s)
        assert rec.output_version_id is not None and repo.list_evaluations(s, rec.output_version_id)
        assert "passed" in rec.metrics["gate"]  # the gate's verdict is on the run
        t = rec.artifacts["training"]
        assert (t["epochs_run"], t["stopped"], t["time_budget_s"]) == (2, "budget", 150)
        planned = t["epochs_planned"]
        assert planned > 2 and t["reason"] == f"budget: 150 s reached after 2 of {planned} epochs"
        [exported] = export_all(s)["runs"]  # what `decide export` hands an auditor
        assert exported["artifacts"]["training"]["reason"] == t["reason"]
        assert audit.verify_chain(s).ok
