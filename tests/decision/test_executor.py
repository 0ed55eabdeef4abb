"""Executors: `DECIDE_EXECUTOR` chooses; on Ray a heavy treatment runs in a worker process, its
exceptions come back as themselves, and the engine records the run exactly as it does locally."""

from __future__ import annotations

import os

import pytest

from cxr.errors import InvalidInput
from decision.engine import Engine
from decision.error_reports import ingest, parse_report
from decision.executor import LocalExecutor, RayExecutor, make_executor
from policies import load_policy, parse_policy
from registry import audit, repo
from registry.entities import RunOutcome
from registry.session import session_scope
from tests import dates
from treatments.base import TreatmentDeclined, TreatmentResult
from treatments.plugins import load_treatments


def test_the_setting_chooses_the_executor(monkeypatch):
    assert isinstance(make_executor(), LocalExecutor)
    monkeypatch.setenv("DECIDE_EXECUTOR", "ray")
    assert isinstance(make_executor(), RayExecutor)
    with pytest.raises(InvalidInput) as err:
        make_executor("slurm")
    assert err.value.field == "DECIDE_EXECUTOR"


def test_head_level_treatments_stay_in_this_process_even_on_ray():
    class Head:
        name, head_only = "head_toy", True

        def apply(self, ctx):
            return TreatmentResult(notes=str(os.getpid()))

    ex = RayExecutor()
    assert ex.run(Head(), None).notes == str(os.getpid())
    assert ex._task is None  # Ray was never started for it


# -- on a real (local) Ray cluster ------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _report(url, pathology: str = "Infiltration") -> int:  # the commonest finding: enough calibration positives
    rep = {"model": "cxr", "version": 1, "pathology": pathology, "kind": "false_positives", "metric": "fpr",
           "value": 0.6, "target": 0.2, "site": "site-b", "window_start": dates.day(0),
           "window_end": dates.day(7), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    with session_scope(url) as s:
        return ingest(s, [parse_report(rep)]).ids[0]


def _only(name: str, **params):
    raw = load_policy().model_dump(mode="json")
    keep = raw["treatments"].get(name, {"prior_cost": 3, "fixes": ["false_positives"], "p_success_default": 0.5})
    raw["treatments"] = {name: {**keep, "needs_approval": False, "params": {**keep.get("params", {}), **params}}}
    return parse_policy(raw)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_f_reoptimization_runs_as_a_ray_task_and_is_recorded_as_usual(tiny_home, ray_cluster):
    _report(tiny_home.url)
    ex = RayExecutor()
    plugin = load_treatments().treatments["f_reoptimization"]
    engine = Engine(tiny_home.url, tiny_home.home, _only("f_reoptimization", epochs=1),
                    plugins={"f_reoptimization": plugin}, executor=ex)
    summary = engine.run_pass()
    [run] = summary.decisions[0].runs
    assert run.outcome in (RunOutcome.accepted, RunOutcome.rejected), run.error
    assert ex.last_worker is not None and ex.last_worker["pid"] != os.getpid()  # it ran in a Ray worker
    with session_scope(tiny_home.url, read_only=True) as s:
        [rec] = repo.list_runs(s)
        assert rec.treatment == "f_reoptimization" and rec.output_version_id is not None
        assert repo.list_evaluations(s, rec.output_version_id)  # evaluated here, on the held-out sets
        assert audit.verify_chain(s).ok


@pytest.mark.slow
@pytest.mark.xdist_group("tiny-home")
def test_a_treatment_that_declines_or_raises_on_a_worker_is_recorded_as_it_would_be_here(tiny_home, ray_cluster):
    class Declines:
        name, head_only, fixes = "declines", False, frozenset({"false_positives"})

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            raise TreatmentDeclined(f"nothing to gain (pid {os.getpid()})", artifacts={"sweep": [1, 2, 5]})

    class Raises(Declines):
        name = "raises"

        def apply(self, ctx):
            raise RuntimeError("out of memory on the worker")

    ex = RayExecutor()
    with pytest.raises(TreatmentDeclined) as err:
        ex.run(Declines(), None)
    assert err.value.artifacts == {"sweep": [1, 2, 5]} and str(os.getpid()) not in str(err.value)

    _report(tiny_home.url)
    raw = _only("raises").model_dump(mode="json")
    engine = Engine(tiny_home.url, tiny_home.home, parse_policy(raw), plugins={"raises": Raises()}, executor=ex)
    [run] = engine.run_pass().decisions[0].runs
    assert run.outcome is RunOutcome.failed and "out of memory on the worker" in run.error
    with session_scope(tiny_home.url, read_only=True) as s:
        assert repo.list_reports(s)[0].status.value == "open"  # actionable again
        assert [v.version for v in repo.list_versions(s, "cxr")] == [1]
