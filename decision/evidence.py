"""Evidence for planning: what the engine reads besides the report, and the report as plugins and the planner see it.

* The planning converters: a stored report as a plugin's `ReportInfo` and the planner's `ReportView`,
  a pathology's SLO, and the data sets a treatment and its evaluation may use (`data_plan`).
* The shift diagnosis: a backbone treatment diagnoses where a site's films depart from the training
  films (`treatments.freopt`); the engine records it on its decision (`record_diagnosis`), later rungs
  of that decision reuse it, and planning reads the newest one about the same version at the same site
  (`site_diagnosis`, a registry finder) to skip head-level rungs under a strong input-level shift.
* Polarized-channel evidence: what a version's classifier channels say about a false-positive
  pathology (`cxr.channels.conflict_evidence` with NIH's reference label statistics).
* Feasibility before climbing: whether any operating point of the serving version's scores on the site's
  labelled rows meets the report's target within the gate's bounds (`decision.feasibility`); when none does,
  threshold calibration is skipped, with the numbers.
* No re-try without new evidence: a treatment whose last run on the same question (version, site,
  pathology, kind) failed the gate is skipped until new feedback or another policy (`decision.retry`).

Evidence never stops planning: what cannot be read is logged and left out.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from cxr.errors import NotFound
from cxr.kinds import LABEL_FREE_KINDS, IssueKind
from decision.feasibility import Feasibility, bounds_for, operating_feasibility, target_of
from decision.past_runs import attempts_on, feedback_times
from decision.planner import ReportView, TreatmentInfo
from decision.retry import not_retried
from policies import Policy, policy_digest
from registry import repo
from registry.entities import PRODUCTION, DatasetEntity, DatasetRole, ReportEntity, VersionEntity
from registry.session import session_scope
from treatments.base import Case, PlanningContext, ReportInfo, Slo, Treatment, probabilities

if TYPE_CHECKING:
    from cxr.channels import ChannelEvidence
    from cxr.labelstats import LabelStats
    from cxr.weights import Weights
    from decision.catalog import Catalog

log = logging.getLogger(__name__)
SHIFT_DIAGNOSIS = "shift_diagnosis"
CHANNEL_EVIDENCE = "channel_evidence"
LABEL_REQUEST = "label_request"
CALIBRATION_FEASIBILITY = "calibration_feasibility"
NOT_RETRIED = "not_retried"
CALIBRATION = "threshold_calibration"  # the treatment that moves a threshold and nothing else


# -- the report as plugins and the planner see it ---------------------------------------------------
def serving_version(session: Session, report: ReportEntity) -> VersionEntity:
    """The version to treat for `report`: the one serving its site now (its own `production@site`, else
    `production`), else the reported one."""
    try:
        return repo.resolve_version(session, f"{report.model}@{PRODUCTION}", site=report.site)
    except NotFound:  # no production alias yet
        return repo.get_version(session, report.version_id)


def report_info(r: ReportEntity) -> ReportInfo:
    cases = tuple(Case(str(c.get("image_id")), float(c.get("score", 0.0)), c.get("label")) for c in r.cases)
    return ReportInfo(r.id, r.pathology, r.kind.value, r.metric, r.value, r.target, r.site, cases, r.subgroup)


def report_view(r: ReportEntity) -> ReportView:
    return ReportView(r.id, r.model, r.version, r.pathology, r.kind.value, r.metric, r.value, r.target, r.site,
                      any(c.get("label") == 0 for c in r.cases) or bool(r.cases), len(r.cases), r.subgroup)


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


def data_plan(session: Session, parent: VersionEntity, site: str) -> DataPlan:
    linked = repo.list_datasets(session, ids=parent.dataset_ids) if parent.dataset_ids else []
    by_role = {role: [d for d in linked if d.role == role] for role in DatasetRole}
    feedback = repo.list_datasets(session, role=DatasetRole.feedback, site=site)
    cal = by_role[DatasetRole.calibration] + [d for d in feedback if d.id not in {x.id for x in linked}]
    cal += [d for d in by_role[DatasetRole.feedback] if d.id not in {x.id for x in cal}]
    return DataPlan(by_role[DatasetRole.train], cal, by_role[DatasetRole.evaluation])


def treatment_infos(session: Session, plugins: dict[str, Treatment], policy: Policy, report: ReportEntity,
                    parent: VersionEntity, skip: str = "", *, catalog: Catalog | None = None) -> list[TreatmentInfo]:
    """What each plugin says about treating `report` on `parent` (its cheap `applicable` check with the
    policy's parameters, the parent's operating points at the site and the site's calibration cases), as
    the planner reads it. A plugin whose check raises is not applicable; `skip` (`skips_head_level`) rules
    out the head-level ones. Then the evidence (`on_evidence`): a treatment that failed the same question
    and nothing changed is skipped, and with a `catalog` (the parent's scores) so is threshold calibration
    when no operating point can meet the target."""
    from cxr.spec import ArchSpec

    spec = ArchSpec.from_json(parent.spec_json)
    cases = sum(d.size for d in data_plan(session, parent, report.site).calibration
                if d.source.get("site") == report.site)
    info, infos = report_info(report), []
    for name, plugin in plugins.items():
        entry = policy.treatments.get(name)
        params = dict(entry.params) if entry is not None else {}
        try:
            ok, why = plugin.applicable(info, PlanningContext(spec, parent.thresholds_for(report.site), params, cases))
        except Exception as exc:  # a plugin's own check must not stop planning
            ok, why = False, f"applicable() raised {exc.__class__.__name__}: {exc}"
        if ok and skip and plugin.head_only:
            ok, why = False, skip
        infos.append(TreatmentInfo(name, frozenset(plugin.fixes), ok, why))
    return on_evidence(session, policy, report, parent, infos, catalog)


# -- the evidence that skips a rung --------------------------------------------------------------------
def on_evidence(session: Session, policy: Policy, report: ReportEntity, parent: VersionEntity,
                infos: list[TreatmentInfo], catalog: Catalog | None = None) -> list[TreatmentInfo]:
    """`infos` with the evidence applied: `skipped` (and `evidence`) set on an applicable treatment that
    failed the same question before without new evidence since (`decision.retry`), and on threshold
    calibration when no operating point meets the target (`calibration_feasibility`, with a catalog)."""
    blocked = {}
    if not policy.learning.retry_failed_without_new_evidence:
        blocked = not_retried(attempts_on(session, parent.id), version_id=parent.id, site=report.site,
                              pathology=report.pathology, kind=report.kind.value,
                              policy_digest=policy_digest(policy), feedback_at=feedback_times(session, report.site))
    feasible = None
    if catalog is not None and any(i.name == CALIBRATION and i.applicable for i in infos):
        feasible = calibration_feasibility(session, catalog, policy, report, parent)
    out = []
    for info in infos:
        if info.applicable and info.name in blocked:
            nr = blocked[info.name]
            info = dataclasses.replace(info, skipped=nr.sentence, evidence={NOT_RETRIED: nr.to_json()})
        elif info.name == CALIBRATION and feasible is not None:
            why = infeasible_skip(policy, feasible)
            info = dataclasses.replace(info, skipped=why, evidence={CALIBRATION_FEASIBILITY: {
                **feasible.to_json(), "skipped": bool(why), "sentence": feasible.sentence}})
        out.append(info)
    return out


def infeasible_skip(policy: Policy, f: Feasibility) -> str:
    """Why calibration is skipped on `f` ('' when it is not: feasible, too few rows, or the policy says try)."""
    cal = policy.calibration
    if f.feasible or not cal.skip_infeasible:
        return ""
    if f.n_pos < cal.feasibility_min_positives or f.n_neg < cal.feasibility_min_negatives:
        return ""
    return f.sentence


def calibration_feasibility(session: Session, catalog: Catalog, policy: Policy, report: ReportEntity,
                            parent: VersionEntity) -> Feasibility | None:
    """`decision.feasibility.operating_feasibility` for `report` on `parent`'s scores over the site's labelled
    calibration rows (its feedback, and calibration sets of that site), at the parent's threshold there.
    None (logged when it failed) when there is nothing to judge: no threshold, no site rows, a kind that is
    not a rate at a threshold, or the data cannot be read."""
    t0 = parent.thresholds_for(report.site).get(report.pathology)
    slo = policy.slos.for_pathology(report.pathology)
    aim = target_of(report.kind.value, report.metric, report.target, slo.max_fpr, slo.min_recall)
    if t0 is None or aim is None or not report.site or report.subgroup:  # (a subgroup's rows: judged by the gate)
        return None
    try:
        sets = [d for d in data_plan(session, parent, report.site).calibration if d.source.get("site") == report.site]
        weights = catalog.weights(parent)
        if not sets or report.pathology not in weights.spec.pathologies:
            return None
        from decision.catalog import head_of

        split = catalog.split(weights, sets, "feasibility").for_site(report.site)
        j = list(weights.spec.pathologies).index(report.pathology)
        known = ~np.isnan(split.labels[:, j])
        scores = probabilities(split.features[known], *head_of(weights))[:, j]
        return operating_feasibility(split.labels[known, j].astype(int), scores, float(t0), aim[0], aim[1],
                                     bounds_for(policy, report.pathology), version=parent.ref, site=report.site)
    except Exception as exc:  # evidence must never stop planning
        log.warning("feasibility of calibration for report %s skipped: %s", report.id, exc)
        return None


# -- the shift diagnosis ------------------------------------------------------------------------------
def site_diagnosis(session: Session, parent: VersionEntity, site: str) -> dict[str, Any] | None:
    """The newest shift diagnosis recorded for `parent`'s films at `site` (by a backbone treatment of an
    earlier decision), with the decision's id, or None. A diagnosis describes one version at one site, so
    no other is reused."""
    found = repo.latest_evidence(session, SHIFT_DIAGNOSIS, version_id=parent.id, site=site)
    return None if found is None else {**found[1], "decision": found[0]}


def skips_head_level(policy: Policy, diag: dict[str, Any] | None) -> str:
    """Why head-level rungs are skipped under `diag` (policy `diagnosis.skip_head_level_strength`), or ''."""
    bar = policy.diagnosis.skip_head_level_strength
    if diag is None or bar is None or diag.get("level") != "input" or float(diag.get("strength", 0.0)) < bar:
        return ""
    return (f"a strong input-level shift at {diag.get('site')} (strength {float(diag['strength']):.2f} ≥ {bar:g}, "
            f"located at {diag.get('located_at') or 'the input'}; diagnosed in decision {diag.get('decision')}) "
            "— head-level treatments read features the site's films already distort, so they are skipped")


def record_diagnosis(url: str | None, decision_id: int, parent: VersionEntity, site: str,
                     artifacts: dict[str, Any] | None) -> None:
    """Record the shift diagnosis a backbone treatment made (its `diagnosis` artifact) on the decision, with
    the version and site it describes: the decision's later rungs reuse it, and the planner reads it for
    later reports about the same version at the same site. Evidence only: a failure to record it is logged."""
    diag = (artifacts or {}).get("diagnosis")
    if not isinstance(diag, dict) or diag.get("level") in (None, "none"):
        return
    try:
        with session_scope(url) as s:
            repo.add_decision_evidence(s, decision_id, SHIFT_DIAGNOSIS,
                                       {**diag, "version_id": parent.id, "version": parent.ref, "site": site},
                                       reason=f"shift diagnosis at {site}: {diag.get('level')}-level")
    except Exception as exc:
        log.warning("recording the shift diagnosis of decision %d failed: %s", decision_id, exc)


def decision_diagnosis(url: str | None, decision_id: int) -> dict[str, Any] | None:
    """The shift diagnosis recorded with the decision (None when none was made)."""
    with session_scope(url, read_only=True) as s:
        return (repo.get_decision(s, decision_id).evidence or {}).get(SHIFT_DIAGNOSIS)


def for_plan(catalog: Catalog, parent: VersionEntity, report: ReportEntity, diag: dict[str, Any] | None, skip: str,
             chosen: bool, infos: list[TreatmentInfo] | tuple[TreatmentInfo, ...] = ()) -> tuple[dict[str, Any], str]:
    """What to record with a decision besides its candidates, and what to add to its rationale: the shift
    diagnosis it read (and why head-level rungs were skipped), the classifier channels behind a false-positive
    report that will be treated, the studies a label request asks for (most shifted first), and the evidence
    of `infos` (`on_evidence`: calibration's feasibility, the runs not re-tried) as key -> treatment -> data."""
    record: dict[str, Any] = {}
    for info in infos:
        for key, value in info.evidence.items():
            record.setdefault(key, {})[info.name] = value
    notes = []
    if diag is not None:
        record[SHIFT_DIAGNOSIS] = diag
        if skip:
            notes.append(f"Shift diagnosis: {skip}.")
    if report.kind == IssueKind.false_positives and chosen:
        hint = channel_hint(catalog, parent, report.pathology)
        if hint is not None:
            record[CHANNEL_EVIDENCE] = hint.data
            notes.append(f"Classifier channels: {hint.hint}.")
    if report.kind in LABEL_FREE_KINDS and report.cases:
        studies = [str(c.get("image_id")) for c in report.cases]
        record[LABEL_REQUEST] = {"site": report.site, "studies": studies, "order": "most shifted first"}
        notes.append(f"Label request: {len(studies)} studies of {report.site}, most shifted first.")
    return record, " ".join(notes)


# -- polarized classifier channels -----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def reference_stats() -> LabelStats:
    """NIH ChestX-ray14's label statistics (112,120 films), computed once per process."""
    from cxr.labelstats import nih_reference_stats

    return nih_reference_stats()


def channel_evidence(weights: Weights, pathology: str, stats: LabelStats | None = None) -> ChannelEvidence:
    """What the version's polarized classifier channels say about `pathology` (`cxr.channels.conflict_evidence`):
    `hint` goes into a decision's rationale, `data` into the numbers recorded with it, and
    `conflict_channels` are the surgery's natural candidates. Raises `InvalidInput` when the classifier has
    no such output."""
    from cxr.channels import conflict_evidence

    w = weights.state["classifier.weight"].numpy()
    return conflict_evidence(w, weights.spec.pathologies, stats or reference_stats(), pathology)


def channel_hint(catalog: Catalog, parent: VersionEntity, pathology: str) -> ChannelEvidence | None:
    """`channel_evidence` for `parent`, or None (logged) if it cannot be read."""
    try:
        return channel_evidence(catalog.weights(parent), pathology)
    except Exception as exc:  # evidence must never stop planning
        log.warning("channel evidence for %s skipped: %s", pathology, exc)
        return None
