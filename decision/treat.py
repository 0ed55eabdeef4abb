"""Run one treatment on a parent version, evaluate the candidate, gate it, record it.

The order of effects is chosen so that nothing is ever half-written:

1. `start_run` is committed first (outcome `running`, heartbeat), so a killed
   process leaves a run that the next pass marks `abandoned`.
2. The treatment runs on cached features of the training and calibration
   splits only — the evaluation split never enters its context.
3. The candidate is evaluated on the held-out evaluation sets (from cached
   features for head-level candidates: no image forward pass) and gated.
4. One transaction then registers the version with its evaluations and
   lineage, closes the run, and either moves `production` or marks the version
   rejected. Before that commit nothing about the candidate exists; after it,
   everything does.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from cxr.weights import Weights, to_bytes
from decision.catalog import Catalog, head_of
from decision.evaluate import EvaluationReport, evaluate_scores
from decision.executor import Executor, LocalExecutor
from decision.gate import Check, GateResult, gate, other_site_checks
from decision.planner import ReportView
from decision.registration import register_weights_bytes
from policies import Policy
from registry import repo
from registry.entities import PRODUCTION, DatasetEntity, DatasetRole, ReportEntity, RunOutcome, VersionEntity
from registry.session import session_scope
from treatments.base import Case, ReportInfo, Slo, Treatment, TreatmentContext, TreatmentDeclined, TreatmentResult

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 20.0


@dataclass
class Outcome:
    """What one treatment run came to."""

    run_id: int
    treatment: str
    outcome: RunOutcome
    version: VersionEntity | None = None
    gate: GateResult | None = None
    notes: str = ""
    error: str = ""
    wall_seconds: float = 0.0
    evaluations: dict[str, EvaluationReport] = field(default_factory=dict)


def report_info(r: ReportEntity) -> ReportInfo:
    cases = tuple(Case(str(c.get("image_id")), float(c.get("score", 0.0)), c.get("label")) for c in r.cases)
    return ReportInfo(r.id, r.pathology, r.kind.value, r.metric, r.value, r.target, r.site, cases)


def report_view(r: ReportEntity) -> ReportView:
    return ReportView(r.id, r.model, r.version, r.pathology, r.kind.value, r.metric, r.value, r.target, r.site,
                      any(c.get("label") == 0 for c in r.cases) or bool(r.cases), len(r.cases))


def slo_for(policy: Policy, pathology: str) -> Slo:
    s = policy.slos.for_pathology(pathology)
    return Slo(min_recall=s.min_recall or 0.0, max_fpr=s.max_fpr or 1.0, min_auroc=s.min_auroc or 0.0)


@dataclass(frozen=True)
class DataPlan:
    """The registered data sets a treatment and its evaluation may use."""

    train: list[DatasetEntity]
    calibration: list[DatasetEntity]  # the version's calibration sets + the site's labelled feedback
    evaluation: list[DatasetEntity]

    @property
    def used_ids(self) -> list[int]:
        return sorted({d.id for d in self.train + self.calibration + self.evaluation})


def data_plan(session, parent: VersionEntity, site: str) -> DataPlan:
    linked = repo.list_datasets(session, ids=parent.dataset_ids) if parent.dataset_ids else []
    by_role = {role: [d for d in linked if d.role == role] for role in DatasetRole}
    feedback = repo.list_datasets(session, role=DatasetRole.feedback, site=site)
    cal = by_role[DatasetRole.calibration] + [d for d in feedback if d.id not in {x.id for x in linked}]
    cal += [d for d in by_role[DatasetRole.feedback] if d.id not in {x.id for x in cal}]
    return DataPlan(by_role[DatasetRole.train], cal, by_role[DatasetRole.evaluation])


class Heartbeat:
    """Calls `beat(session)` in its own transaction every `every` seconds from a thread, while a
    long piece of work runs: a treatment run's heartbeat, a scheduled pass's lease and heartbeat."""

    def __init__(self, url: str | None, beat: Callable[[Session], None], *, every: float = HEARTBEAT_SECONDS,
                 what: str = "heartbeat") -> None:
        self.url, self.beat, self.every, self.what = url, beat, every, what
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name=what, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with session_scope(self.url) as s:
                    self.beat(s)
            except Exception as exc:  # a missed beat only risks an early "abandoned"
                log.warning("%s failed: %s", self.what, exc)

    def __enter__(self) -> Heartbeat:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def candidate_weights(parent: Weights, result: TreatmentResult) -> tuple[Weights, bytes | None]:
    """The candidate's weights (the parent's, unless the treatment changed tensors) and new bytes if any."""
    if result.head_weight is None and result.head_bias is None and not result.state_updates:
        return parent, None
    state = dict(parent.state)
    if result.head_weight is not None:
        state["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(result.head_weight, dtype=np.float32))
    if result.head_bias is not None:
        state["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(result.head_bias, dtype=np.float32))
    for k, v in (result.state_updates or {}).items():
        if k not in state:
            raise ValueError(f"treatment returned unknown tensor {k!r}")
        state[k] = torch.as_tensor(v)
    data, w = to_bytes(parent.spec, state)
    return w, data


def evaluate_candidate(cat: Catalog, parent_v: VersionEntity, parent_w: Weights, cand_w: Weights,
                       thresholds: dict[str, float | None], datasets: list[DatasetEntity], alpha: float
                       ) -> dict[int, EvaluationReport]:
    """Candidate vs parent on every evaluation set (cached features when the backbone is shared)."""
    names = list(parent_w.spec.pathologies)
    out = {}
    for d in datasets:
        labels = cat.dataset(d).aligned_labels(names)
        p_par = cat.probabilities(parent_w, d)
        p_cand = p_par if cand_w is parent_w else cat.probabilities(cand_w, d)
        out[d.id] = evaluate_scores(
            labels, p_cand, p_par, [thresholds.get(n) for n in names], names,
            parent_thresholds=[parent_v.thresholds.get(n) for n in names], alpha=alpha,
        )
    return out


def judge(view: ReportView, evals: dict[int, EvaluationReport], datasets: list[DatasetEntity], policy: Policy
          ) -> GateResult:
    """The full gate on the report's site evaluation set; on the others, nothing may get worse."""
    if not datasets:
        return GateResult(False, (Check("evaluation", False, "the version has no evaluation data set"),),
                          "rejected: nothing to evaluate on")
    site = [d for d in datasets if d.source.get("site") == view.site] or datasets
    checks: list[Check] = []
    for d in datasets:
        keep = gate(view, evals[d.id], policy).checks if d in site else other_site_checks(view, evals[d.id], policy)
        checks += [Check(f"{c.name}@{d.name}", c.passed, c.detail, c.value, c.limit) for c in keep]
    passed = all(c.passed for c in checks)
    failed = [c for c in checks if not c.passed]
    head = "accepted: every check passed" if passed else f"rejected: {len(failed)} check(s) failed"
    detail = "; ".join(f"{c.name}: {c.detail}" for c in (failed[:3] if failed else checks[:1]))
    return GateResult(passed, tuple(checks), f"{head} ({detail})")


def execute(url: str | None, home: Path, cat: Catalog, policy: Policy, plugin: Treatment, report: ReportEntity,
            parent: VersionEntity, decision_id: int, seed: int = 0, executor: Executor | None = None) -> Outcome:
    """Run `plugin` for `report` on `parent`; see the module docstring for the order of effects."""
    entry = policy.treatments.get(plugin.name)
    params: dict[str, Any] = dict(entry.params) if entry is not None else {}
    with session_scope(url) as s:
        run = repo.start_run(s, decision_id, plugin.name, params, parent.id)
        plan = data_plan(s, parent, report.site)
    t0 = time.perf_counter()  # restarted once the context is built: features are a one-off cache cost
    try:
        parent_w = cat.weights(parent)
        calibration = cat.split(parent_w, plan.calibration, "calibration")
        if calibration is None:
            raise ValueError("no calibration data: register a calibration or feedback data set for this version")
        ctx = TreatmentContext(
            report=report_info(report), spec=parent_w.spec, head_weight=head_of(parent_w)[0].copy(),
            head_bias=head_of(parent_w)[1].copy(), thresholds=dict(parent.thresholds),
            train=cat.split(parent_w, plan.train, "train"),
            calibration=calibration,
            slo=slo_for(policy, report.pathology), params=params, delta=policy.calibration.delta,
            fpr_delta=policy.calibration.fpr_delta, fpr_headroom=policy.calibration.fpr_headroom, seed=seed,
            cache=cat.features_cache,
            load_state=lambda: dict(parent_w.state),
            image_data=None if plugin.head_only else _image_data(cat, plan),
        )
        t0 = time.perf_counter()
        with Heartbeat(url, lambda s: repo.heartbeat_run(s, run.id), what=f"heartbeat of run {run.id}"):
            result = (executor or LocalExecutor()).run(plugin, ctx)
        wall = time.perf_counter() - t0
        cand_w, data = candidate_weights(parent_w, result)
        thresholds = dict(result.thresholds or parent.thresholds)
        evals = evaluate_candidate(cat, parent, parent_w, cand_w, thresholds, plan.evaluation, policy.gate.alpha)
        verdict = judge(report_view(report), evals, plan.evaluation, policy)
    except TreatmentDeclined as exc:
        return _close(url, run.id, plugin.name, RunOutcome.rejected, time.perf_counter() - t0,
                      error=f"declined: {exc}", artifacts=exc.artifacts)
    except Exception as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.warning("treatment %s failed: %s", plugin.name, text)
        return _close(url, run.id, plugin.name, RunOutcome.failed, time.perf_counter() - t0, error=text)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): record it, then let it propagate
        _close(url, run.id, plugin.name, RunOutcome.failed, time.perf_counter() - t0, error="interrupted")
        raise
    return _record(url, home, cat, policy, plugin.name, run.id, report, parent, decision_id, plan, result,
                   cand_w, data, thresholds, evals, verdict, wall)


def _image_data(cat: Catalog, plan: DataPlan) -> dict[str, Any]:
    """Backbone-level treatments read images: the training and the calibration (+feedback) sets."""
    from cxr.data import concat_datasets

    out = {}
    for role, ds in (("train", plan.train), ("calibration", plan.calibration)):
        if ds:
            out[role] = concat_datasets([cat.dataset(d) for d in ds], role)
    return out


def _close(url, run_id, name, outcome, wall, *, error="", artifacts=None) -> Outcome:
    with session_scope(url) as s:
        repo.finish_run(s, run_id, outcome, None, wall, None, error[:4000], {}, artifacts or {})
    return Outcome(run_id, name, outcome, error=error, wall_seconds=wall)


def _record(url, home, cat, policy, name, run_id, report, parent, decision_id, plan, result, cand_w, data,
            thresholds, evals, verdict: GateResult, wall) -> Outcome:
    rows = {d_id: ev.to_rows() for d_id, ev in evals.items()}
    outcome = RunOutcome.accepted if verdict.passed else RunOutcome.rejected
    metrics = {"gate": {"passed": verdict.passed, "summary": verdict.summary,
                        "checks": [c.__dict__ for c in verdict.checks]}}
    why = f"{name} for report {report.id}: {verdict.summary}"
    common = dict(trainable_parameters=result.trainable_parameters, decision_id=decision_id,
                  treatment_run_id=run_id, dataset_ids=plan.used_ids, evaluations=rows, notes=result.notes)
    with session_scope(url) as s:
        if data is None:
            version = repo.derive_version(s, parent.id, thresholds=thresholds, reason=why, **common)
        else:
            version = register_weights_bytes(s, data, parent.model, source=f"run {run_id}", parent=parent.id,
                                             thresholds=thresholds, reason=why, home=home, **common)
        repo.finish_run(s, run_id, outcome, version.id, wall, result.trainable_parameters, "", metrics,
                        result.artifacts)
        if verdict.passed:
            repo.set_alias(s, parent.model, PRODUCTION, version.id, reason=why)
        else:
            repo.set_version_status(s, version.id, "rejected", reason=verdict.summary)
        version = repo.get_version(s, version.id)
    if data is not None:
        cat.remember(cand_w)
    by_name = {d.name: evals[d.id] for d in plan.evaluation}
    return Outcome(run_id, name, outcome, version, verdict, result.notes, wall_seconds=wall, evaluations=by_name)
