"""What the gate's lineage checks (`decision.gate_lineage`) need, read from the registry and the data.

* The site's authorised baseline (`registry.repo_authorised`) for every evaluation set's site, and the
  candidate against it on that set's rows: a paired evaluation exactly like the one against the parent
  (the same cached features, the same labels), so the check costs one head product per set. When the
  authorised baseline is the parent, the parent evaluation is reused.
* The patients the treatment trained on: every patient of the training and calibration (+ feedback)
  sets it was handed — what it could see, whatever it chose to use — plus any it declares it read
  itself (`TreatmentResult.training_patients`); against each evaluation set's patients. Both as sha256
  digests of the patient ids, so the run's record names no patient.

`LineageEvidence.record()` is what the run keeps with its gate verdict: the authorised baseline per site,
the training patients' digests, and per evaluation set its patient count, the digest of its patient set
and the overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from decision.catalog import Catalog
from decision.evaluate import EvaluationReport, evaluate_scores
from decision.gate_lineage import BaselineComparison, Sequestration, patient_digests
from registry import repo
from registry.entities import DatasetEntity, VersionEntity
from registry.repo_authorised import AuthorisedVersion, authorised_version
from treatments.base import TreatmentResult

__all__ = ["Authorised", "LineageEvidence", "authorised_baselines", "gather", "training_patients"]


@dataclass(frozen=True)
class Authorised:
    """A site's authorised baseline: who authorised it, and the version itself."""

    grant: AuthorisedVersion
    version: VersionEntity


@dataclass(frozen=True)
class LineageEvidence:
    """Per evaluation set id: the baseline comparison and the patient overlap; and the training patients."""

    baselines: dict[int, BaselineComparison]
    sequestration: dict[int, Sequestration]
    training: frozenset[str]
    evaluation_patients: dict[int, frozenset[str]]
    authorised: dict[str, Authorised]
    names: dict[int, str]

    def record(self) -> dict[str, Any]:
        """Plain JSON for the run's metrics."""
        return {
            "authorised_baseline": {site or "*": {"version_id": a.grant.version_id, "ref": a.grant.ref,
                                                  "kind": a.grant.kind, "actor": a.grant.actor,
                                                  "reason": a.grant.reason, "grant_site": a.grant.site}
                                    for site, a in sorted(self.authorised.items())},
            "sequestration": {
                "training_patients": len(self.training),
                "training_patients_sha256": sorted(self.training),
                "evaluation_sets": [{"dataset_id": d_id, "dataset": self.names[d_id], "patients": s.evaluation_patients,
                                     "patients_digest": _set_digest(self.evaluation_patients[d_id]),
                                     "overlap": s.overlap} for d_id, s in sorted(self.sequestration.items())],
            },
        }


def _set_digest(digests: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _site(d: DatasetEntity) -> str:
    return d.source.get("site") or ""


def authorised_baselines(session: Session, parent: VersionEntity, datasets: list[DatasetEntity]
                         ) -> dict[str, Authorised]:
    """{site: its authorised baseline} for the sites of `datasets` ('' for a set without a site)."""
    out: dict[str, Authorised] = {}
    for site in sorted({_site(d) for d in datasets}):
        grant = authorised_version(session, parent.id, site)
        out[site] = Authorised(grant, parent if grant.version_id == parent.id else repo.get_version(session,
                                                                                                   grant.version_id))
    return out


def training_patients(cat: Catalog, datasets: list[DatasetEntity], result: TreatmentResult | None) -> frozenset[str]:
    """Digests of every patient of `datasets` (what the treatment was handed) and of those it declares."""
    seen = (p for d in datasets for p in cat.dataset(d).patient_ids)
    declared = result.training_patients if result is not None and result.training_patients else ()
    return patient_digests(seen) | patient_digests(declared)


def _aligned(probs: np.ndarray, names: list[str], wanted: list[str]) -> np.ndarray:
    """`probs` (columns `names`) re-ordered to `wanted`; all-NaN (no output) where a name is missing."""
    out = np.full((probs.shape[0], len(wanted)), np.nan)
    pos = {n: j for j, n in enumerate(names)}
    for k, n in enumerate(wanted):
        if n in pos:
            out[:, k] = probs[:, pos[n]]
    return out


def gather(cat: Catalog, parent: VersionEntity, cand_w, defaults: dict[str, float | None],
           site_overrides: dict[str, dict[str, float | None]], datasets: list[DatasetEntity],
           evals: dict[int, EvaluationReport], authorised: dict[str, Authorised], training: frozenset[str],
           alpha: float) -> LineageEvidence:
    """The lineage evidence for every evaluation set of `datasets` (see the module docstring)."""
    names = list(cand_w.spec.pathologies)
    baselines, overlap, patients = {}, {}, {}
    for d in datasets:
        site = _site(d)
        ds = cat.dataset(d)
        patients[d.id] = patient_digests(ds.patient_ids)
        overlap[d.id] = Sequestration.of(training, patients[d.id])
        a = authorised[site]
        if a.version.id == parent.id:
            baselines[d.id] = BaselineComparison(a.grant.label, evals[d.id])
            continue
        base_w = cat.weights(a.version)
        p_base = _aligned(cat.probabilities(base_w, d), list(base_w.spec.pathologies), names)
        cand_t = {**defaults, **site_overrides.get(site, {})}
        base_t = a.version.thresholds_for(site or None)
        ev = evaluate_scores(ds.aligned_labels(names), cat.probabilities(cand_w, d), p_base,
                             [cand_t.get(n) for n in names], names,
                             parent_thresholds=[base_t.get(n) for n in names], alpha=alpha)
        baselines[d.id] = BaselineComparison(a.grant.label, ev)
    return LineageEvidence(baselines, overlap, training, patients, authorised, {d.id: d.name for d in datasets})
