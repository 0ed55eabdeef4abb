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
   everything does. A candidate that passed with a flag a person must accept
   (an underpowered check) is registered, its run `held`, and nothing moves
   until `decide approve` (see `decision.approvals`). If that transaction fails
   (a full disk during the blob write, a lost connection, a refused write),
   the run is closed `failed` with the error and the ladder goes on; a blob
   written before the failure is an orphan for `decide gc`.

Sites: the parent is the version serving the report's site (its own
`production@site`, else `production`) and the treatment sees that site's
operating points. A thresholds-only change for a site's report becomes an
override for that site alone (policy `calibration.scope`), so every other site
keeps its operating points by construction; the gate (`judge_sites`) then says
whether the promotion covers every site or the report's site only.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.faults import failpoint
from cxr.weights import Weights, to_bytes
from decision.approvals import PromotionIntent
from decision.catalog import Catalog, head_of
from decision.evaluate import EvaluationReport, evaluate_scores
from decision.evidence import DataPlan, data_plan, record_diagnosis, report_info, report_view, slo_for
from decision.executor import Executor, LocalExecutor
from decision.gate import GateResult, SiteEvaluation, judge_group, judge_sites
from decision.group_treat import group_site_thresholds
from decision.lineage_evidence import LineageEvidence, authorised_baselines, gather, training_patients
from decision.liveness import Heartbeat
from decision.planner import ReportView
from decision.registration import register_weights_bytes
from decision.subgroups import subgroup_input
from policies import Policy
from registry import repo
from registry.entities import DatasetEntity, ReportEntity, RunOutcome, VersionEntity
from registry.repo_decisions import RunFinished
from registry.session import session_scope
from treatments.base import Treatment, TreatmentContext, TreatmentDeclined, TreatmentResult
from treatments.footprint_base import FOOTPRINT_ARTIFACT

log = logging.getLogger(__name__)


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


def candidate_weights(parent: Weights, result: TreatmentResult) -> tuple[Weights, bytes | None]:
    """The candidate's weights (the parent's, unless the treatment changed tensors) and new bytes if any.

    A result with a `spec` (a footprint treatment: pruned, compressed, float16, int8) replaces the
    architecture and the whole state; head and tensor updates then apply on top of its state.
    """
    if result.spec is not None:
        if result.state is None:
            raise ValueError("a treatment that returns a new spec must return its full state")
        state = {k: torch.as_tensor(v) for k, v in result.state.items()}
        spec = result.spec
    elif result.head_weight is None and result.head_bias is None and not result.state_updates:
        return parent, None
    else:
        state, spec = dict(parent.state), parent.spec
    if result.head_weight is not None:
        state["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(result.head_weight, dtype=np.float32))
    if result.head_bias is not None:
        state["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(result.head_bias, dtype=np.float32))
    for k, v in (result.state_updates or {}).items():
        if k not in state:
            raise ValueError(f"treatment returned unknown tensor {k!r}")
        state[k] = torch.as_tensor(v)
    data, w = to_bytes(spec, state)
    return w, data


def evaluate_candidate(cat: Catalog, parent_v: VersionEntity, parent_w: Weights, cand_w: Weights,
                       thresholds: dict[str, float | None], datasets: list[DatasetEntity], alpha: float,
                       site_thresholds: dict[str, dict[str, float | None]] | None = None,
                       policy: Policy | None = None) -> dict[int, EvaluationReport]:
    """Candidate vs parent on every evaluation set (cached features when the backbone is shared), and per
    subgroup under `policy`'s `[subgroups]` when given (`decision.subgroups`, stored with the evaluation).

    Each set is judged at the operating points in force at its site: the defaults `thresholds` with
    `site_thresholds[site]` on top for the candidate, `parent_v.thresholds_for(site)` for the parent.
    """
    names = list(parent_w.spec.pathologies)
    out = {}
    for d in datasets:
        site = d.source.get("site")
        cand_t = {**thresholds, **(site_thresholds or {}).get(site or "", {})}
        par_t = parent_v.thresholds_for(site)
        labels = cat.dataset(d).aligned_labels(names)
        p_par = cat.probabilities(parent_w, d)
        p_cand = p_par if cand_w is parent_w else cat.probabilities(cand_w, d)
        out[d.id] = evaluate_scores(
            labels, p_cand, p_par, [cand_t.get(n) for n in names], names,
            parent_thresholds=[par_t.get(n) for n in names], alpha=alpha,
            subgroups=subgroup_input(cat.dataset(d), policy) if policy is not None else None,
        )
    return out


def site_evaluations(evals: dict[int, EvaluationReport], datasets: list[DatasetEntity],
                     lineage: LineageEvidence | None = None) -> list[SiteEvaluation]:
    """The gate's view of each evaluation set, with its lineage evidence (authorised baseline, patients) if given."""
    return [SiteEvaluation(d.name, d.source.get("site"), evals[d.id],
                           lineage.baselines.get(d.id) if lineage else None,
                           lineage.sequestration.get(d.id) if lineage else None) for d in datasets]


def judge(view: ReportView, evals: dict[int, EvaluationReport], datasets: list[DatasetEntity], policy: Policy,
          *, measured: dict[str, float] | None = None, own_alias_sites: frozenset[str] = frozenset(),
          lineage: LineageEvidence | None = None) -> GateResult:
    """The full gate on the report's site evaluation sets; on the others, nothing may get worse."""
    return judge_sites(view, site_evaluations(evals, datasets, lineage), policy, measured=measured,
                       own_alias_sites=own_alias_sites)


@dataclass(frozen=True)
class CandidateThresholds:
    """The candidate's operating points: defaults, per-site overrides, and whether only one site's changed."""

    defaults: dict[str, float | None]
    site_overrides: dict[str, dict[str, float | None]]
    site_only: bool


def candidate_thresholds(policy: Policy, parent: VersionEntity, site: str, result: TreatmentResult,
                         weights_changed: bool) -> CandidateThresholds:
    """Where a treatment's thresholds go. The treatment saw the site's operating points
    (`parent.thresholds_for(site)`) and returned the ones it wants there.

    * weights unchanged and `calibration.scope` "site": every threshold it moved becomes an override for
      `site`; defaults and other sites' overrides stay the parent's (site_only).
    * weights unchanged, scope "all_sites": the moved thresholds become the defaults.
    * weights changed: its thresholds become the defaults and the parent's overrides are dropped (they
      were chosen on the old scores), except that `site`'s own stay folded into the defaults it returned.
    """
    wanted = dict(result.thresholds or parent.thresholds_for(site))
    seen = parent.thresholds_for(site)
    moved = {p: t for p, t in wanted.items() if seen.get(p) != t}
    overrides = {k: dict(v) for k, v in parent.site_thresholds.items()}
    if weights_changed:
        return CandidateThresholds(wanted, {}, False)
    if site and policy.calibration.scope == "site":
        if moved:
            overrides[site] = {**overrides.get(site, {}), **moved}
        return CandidateThresholds(dict(parent.thresholds), overrides, True)
    return CandidateThresholds({**parent.thresholds, **moved}, overrides, False)


def footprint_measured(result: TreatmentResult) -> dict[str, float]:
    """The numbers a footprint treatment measured (parameters, size, latency), for the gate's target."""
    fp = result.artifacts.get(FOOTPRINT_ARTIFACT) if result.artifacts else None
    out: dict[str, float] = {}
    for k, v in (fp or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
        elif k == "latency_ms" and isinstance(v, dict) and v.get("value") is not None:
            out[k] = float(v["value"])
    return out


def execute(url: str | None, home: Path, cat: Catalog, policy: Policy, plugin: Treatment, report: ReportEntity,
            parent: VersionEntity, decision_id: int, seed: int = 0, executor: Executor | None = None,
            *, diagnosis: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
            group: tuple[ReportEntity, ...] = ()) -> Outcome:
    """Run `plugin` for `report` on `parent`; see the module docstring for the order of effects.

    `group`: the other reports of a site group (`decision.site_groups`) that `report` leads: their pathologies'
    operating points at the site are chosen on the candidate (`decision.group_treat`) and the gate judges every
    grouped target (`decision.gate.judge_group`)."""
    entry = policy.treatments.get(plugin.name)
    params: dict[str, Any] = dict(entry.params) if entry is not None else {}
    with session_scope(url) as s:
        run = repo.start_run(s, decision_id, plugin.name, params, parent.id)
        plan = data_plan(s, parent, report.site)
        own_sites = frozenset(repo.sites_with_own_alias(s, parent.model))
        authorised = authorised_baselines(s, parent, plan.evaluation)
    failpoint("treatment_start")
    t0 = time.perf_counter()  # restarted once the context is built: features are a one-off cache cost
    try:
        parent_w = cat.weights(parent)
        calibration = cat.split(parent_w, plan.calibration, "calibration")
        if calibration is None:
            raise ValueError("no calibration data: register a calibration or feedback data set for this version")
        ctx = TreatmentContext(
            report=report_info(report), spec=parent_w.spec, head_weight=head_of(parent_w)[0].copy(),
            head_bias=head_of(parent_w)[1].copy(), thresholds=parent.thresholds_for(report.site),
            train=cat.split(parent_w, plan.train, "train"),
            calibration=calibration,
            slo=slo_for(policy, report.pathology), params=params, delta=policy.calibration.delta,
            fpr_delta=policy.calibration.fpr_delta, fpr_headroom=policy.calibration.fpr_headroom, seed=seed,
            cache=cat.features_cache,
            load_state=lambda: dict(parent_w.state),
            image_data=None if plugin.head_only else _image_data(cat, plan),
            diagnosis=diagnosis,
        )
        t0 = time.perf_counter()
        with Heartbeat(url, lambda s: repo.heartbeat_run(s, run.id), what=f"heartbeat of run {run.id}"):
            result = (executor or LocalExecutor()).run(plugin, ctx)
        wall = time.perf_counter() - t0
        if diagnosis is None:
            record_diagnosis(url, decision_id, parent, report.site, result.artifacts)
        cand_w, data = candidate_weights(parent_w, result)
        thr = candidate_thresholds(policy, parent, report.site, result, cand_w is not parent_w)
        if group:
            chosen, notes = group_site_thresholds(cat, policy, ctx, cand_w, plan.calibration, report.site, group)
            thr = CandidateThresholds(thr.defaults, {**thr.site_overrides, report.site: {
                **thr.site_overrides.get(report.site, {}), **chosen}}, thr.site_only)
            result.notes = f"{result.notes}; site group at {report.site}, thresholds there: {'; '.join(notes)}"
        failpoint("evaluation")
        if progress:
            progress(f"{plugin.name}: evaluating the candidate on {len(plan.evaluation)} held-out set(s)")
        evals = evaluate_candidate(cat, parent, parent_w, cand_w, thr.defaults, plan.evaluation, policy.gate.alpha,
                                   thr.site_overrides, policy)
        lineage = gather(cat, parent, cand_w, thr.defaults, thr.site_overrides, plan.evaluation, evals, authorised,
                         training_patients(cat, plan.train + plan.calibration, result), policy.gate.alpha)
        verdict = (judge_group([report_view(r) for r in (report, *group)],
                               site_evaluations(evals, plan.evaluation, lineage),
                               policy, measured=footprint_measured(result), own_alias_sites=own_sites) if group else
                   judge(report_view(report), evals, plan.evaluation, policy, measured=footprint_measured(result),
                         own_alias_sites=own_sites, lineage=lineage))
        failpoint("gate")
    except TreatmentDeclined as exc:
        if diagnosis is None:
            record_diagnosis(url, decision_id, parent, report.site, exc.artifacts)
        return _close(url, run.id, plugin.name, RunOutcome.rejected, time.perf_counter() - t0,
                      error=f"declined: {exc}", artifacts=exc.artifacts)
    except Exception as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.warning("treatment %s failed: %s", plugin.name, text)
        return _close(url, run.id, plugin.name, RunOutcome.failed, time.perf_counter() - t0, error=text)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): record it, then let it propagate
        _close(url, run.id, plugin.name, RunOutcome.failed, time.perf_counter() - t0, error="interrupted")
        raise
    try:
        return _record(url, home, cat, plugin.name, run.id, report, parent, decision_id, plan, result,
                       cand_w, data, thr, evals, verdict, wall, lineage.record())
    except Exception as exc:  # a full disk, a lost connection, a refused write: the one transaction did not commit
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.warning("recording the %s candidate failed: %s", plugin.name, text)
        return _close(url, run.id, plugin.name, RunOutcome.failed, wall,
                      error=f"recording the candidate failed: {text}")


def _image_data(cat: Catalog, plan: DataPlan) -> dict[str, Any]:
    """Backbone-level treatments read images: the training and the calibration (+feedback) sets."""
    from cxr.data import concat_datasets

    out = {}
    for role, ds in (("train", plan.train), ("calibration", plan.calibration)):
        if ds:
            out[role] = concat_datasets([cat.dataset(d) for d in ds], role)
    return out


def _close(url, run_id, name, outcome, wall, *, error="", artifacts=None) -> Outcome:
    """Finish the run without a candidate. If it is not `running` any more — another pass took it over, or
    a commit whose reply was lost had recorded it after all — the registry's word stands and is returned."""
    try:
        with session_scope(url) as s:
            repo.finish_run(s, run_id, outcome, None, wall, None, error[:4000], {}, artifacts or {})
    except RunFinished:
        with session_scope(url, read_only=True) as s:
            run = repo.get_run(s, run_id)
            version = repo.get_version(s, run.output_version_id) if run.output_version_id is not None else None
        log.warning("run %d is already %s: %s not recorded", run_id, run.outcome.value, outcome.value)
        return Outcome(run_id, name, run.outcome, version, error=run.error_text or error, wall_seconds=wall)
    return Outcome(run_id, name, outcome, error=error, wall_seconds=wall)


def _record(url, home, cat, name, run_id, report, parent, decision_id, plan, result, cand_w, data,
            thr: CandidateThresholds, evals, verdict: GateResult, wall, lineage: dict[str, Any]) -> Outcome:
    rows = {d_id: ev.to_rows() for d_id, ev in evals.items()}
    held = verdict.passed and verdict.needs_approval
    outcome = RunOutcome.held if held else (RunOutcome.accepted if verdict.passed else RunOutcome.rejected)
    intent = PromotionIntent.for_verdict(verdict.scope, report.site, parent.id)
    metrics = {"gate": {"passed": verdict.passed, "summary": verdict.summary, "needs_approval": verdict.needs_approval,
                        "scope": verdict.scope, "site": verdict.site,
                        "promote": intent.to_json(),
                        "checks": [c.__dict__ for c in verdict.checks]}, **lineage}
    why = f"{name} for report {report.id}: {verdict.summary}"
    common = dict(trainable_parameters=result.trainable_parameters, decision_id=decision_id,
                  treatment_run_id=run_id, dataset_ids=plan.used_ids, evaluations=rows, notes=result.notes)
    with session_scope(url) as s:
        if data is None:
            version = repo.derive_version(s, parent.id, thresholds=thr.defaults, site_thresholds=thr.site_overrides,
                                          reason=why, **common)
        else:
            version = register_weights_bytes(s, data, parent.model, source=f"run {run_id}", parent=parent.id,
                                             thresholds=thr.defaults, site_thresholds=thr.site_overrides or None,
                                             reason=why, home=home, **common)
        repo.finish_run(s, run_id, outcome, version.id, wall, result.trainable_parameters, "", metrics,
                        result.artifacts)
        if outcome is RunOutcome.accepted:
            repo.set_alias(s, parent.model, intent.alias, version.id, reason=why, site=intent.site, run_id=run_id)
        elif outcome is RunOutcome.rejected:
            repo.set_version_status(s, version.id, "rejected", reason=verdict.summary)
        version = repo.get_version(s, version.id)
        failpoint("registration")  # everything of the candidate is written, nothing committed
    if data is not None:
        cat.remember(cand_w)
    by_name = {d.name: evals[d.id] for d in plan.evaluation}
    return Outcome(run_id, name, outcome, version, verdict, result.notes, wall_seconds=wall, evaluations=by_name)
