"""Monitoring without labels: a site's window of studies judged against its serving version's reference.

Labels come late or never. For a window of a site's unlabelled studies (`assess_unlabelled`) the monitor
scores them with the version serving that site, reads the version's reference statistics
(`decision.reference`: from its calibration split) and records, in one `unlabelled_windows` row:

* the drift tests (`cxr.drift`): exact KS on every named output and a permutation MMD on the pooled
  features, Holm over that family — the window-level false-alarm rate is the policy's `label_free.alpha`
  whatever the window's size (a window under `min_window` studies is recorded, not tested);
* the share of studies outside what the version was validated on (`cxr.ood`, at `ood_rate`, or the
  smallest rate the reference's held-out split can promise, which the record says);
* per pathology with an operating point and a calibration map, the label-free estimate of recall and FPR
  at the site's operating point (`cxr.estimate`), worst first, or why it is not valid;
* the studies that moved most (the MMD's witness), the first to label.

A shifted window files one `distribution_shift` error report (pathology: the output whose test is worst;
metric `shift_p`, the smallest Holm-adjusted p, against `alpha`; its cases: the studies that moved most,
most shifted first) unless one is still open for the site — the bundled policy answers it with a request
for labels that waits for a person (`treatments.label_request`): nothing is retrained on an unlabelled
signal. When labels for the same site and window arrive, `check_realised` sets each estimate against
them (`cxr.estimate.check_against_labels`, Holm over the window's pathologies) and stores the error, so a
site whose labels contradict the estimate is told that it cannot be trusted.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.data import CXRDataset
from cxr.drift import WindowDrift, holm, window_drift
from cxr.estimate import EstimateLimits, PerformanceEstimate, check_against_labels, estimate_window
from cxr.kinds import IssueKind
from cxr.ood import StudyAssessment, assess_studies, pixel_stats
from cxr.reference import Reference
from decision.catalog import record_dataset
from decision.error_reports import ingest, parse_report
from decision.reference import reference_for
from policies import Policy
from registry import repo
from registry.entities import PRODUCTION, DatasetEntity, DatasetRole, ReportStatus, VersionEntity
from registry.entities_label_free import WindowEntity
from registry.session import session_scope

log = logging.getLogger(__name__)
SHIFT = IssueKind.distribution_shift
_OPEN = (ReportStatus.open, ReportStatus.claimed, ReportStatus.decided)


@dataclass
class UnlabelledResult:
    """What one unlabelled window came to."""

    version: str
    dataset: DatasetEntity
    window: Any  # `decision.jobs.Window`: index, start, end
    record: WindowEntity  # what was stored (`unlabelled_windows`)
    drift: WindowDrift | None  # None: fewer studies than `min_window`
    estimates: list[PerformanceEstimate]
    ood: list[StudyAssessment]
    report_id: int | None  # the distribution_shift report filed now
    still_open: int | None  # or the one still open for the site
    notes: list[str]


def _limits(policy: Policy) -> EstimateLimits:
    lf = policy.label_free
    return EstimateLimits(max_ood_share=lf.max_ood_share, max_unsupported_share=lf.max_unsupported_share,
                          min_expected=lf.min_expected)


def _seed(site: str, start: Any) -> int:
    """The window's own seed: the same window gives the same permutations and draws in every process."""
    return zlib.crc32(f"{site}|{start.isoformat()}".encode())


def _estimable(ref: Reference, thresholds: dict[str, float | None]) -> dict[str, float]:
    return {n: float(t) for n, t in thresholds.items() if t is not None and n in ref.maps}


def assess_unlabelled(engine: Any, model: str, ds: CXRDataset, source: dict[str, Any], site: str, window: Any
                      ) -> UnlabelledResult:
    """Judge one window of `site`'s unlabelled studies (`ds`; its labels, if any, are not read) against the
    version serving the site; record it, and file a `distribution_shift` report when it shifted."""
    policy, lf = engine.policy, engine.policy.label_free
    with session_scope(engine.url) as s:
        prod = repo.resolve_version(s, f"{model}@{PRODUCTION}", site=site)
        dataset = record_dataset(s, ds, DatasetRole.unlabelled, source)
    engine.catalog.attach(dataset, ds)
    ref = reference_for(engine.catalog, engine.url, prod)
    w = engine.catalog.weights(prod)
    feats, probs = engine.catalog.features(w, dataset), engine.catalog.probabilities(w, dataset)
    names, thresholds = list(w.spec.pathologies), prod.thresholds_for(site)
    seed, notes = _seed(site, window.start), []
    rate = max(lf.ood_rate, ref.ood.smallest_rate())
    if rate > lf.ood_rate:
        notes.append(f"OOD checks at a {rate:.2%} false-alarm rate: the reference's held-out split cannot promise "
                     f"{lf.ood_rate:.2%}")
    stats = [pixel_stats(img[0]) for img in _images(ds)]
    dicom = ds.provenance.get("dicom") or {}  # films:DIR reads each DICOM header (cxr.data.films_dataset)
    ood = assess_studies(ref.ood, feats, images=stats, metadata=[dicom.get(i) for i in ds.image_ids],
                         probabilities=probs, rate=rate)
    drift = None
    if len(ds) >= lf.min_window:
        drift = window_drift(ref.drift, probs, feats, rng=np.random.default_rng(seed), alpha=lf.alpha,
                             n_permutations=lf.permutations, max_window=lf.max_window)
    else:
        notes.append(f"{len(ds)} studies: fewer than {lf.min_window}, not tested")
    cols = _estimable(ref, thresholds)
    targets = {n: policy.slos.for_pathology(n) for n in cols}
    estimates = estimate_window(ref.maps, {n: probs[:, names.index(n)] for n in cols}, cols,
                                ood=[a.outside for a in ood], targets=targets, limits=_limits(policy), seed=seed)
    moved = [ds.image_ids[i] for i in (drift.most_shifted if drift else [])][:lf.label_request_size]
    report_id = still_open = None
    if drift is not None and drift.shifted:
        report_id, still_open = _file_report(engine, prod, site, window, drift, ds, probs, names, notes)
    with session_scope(engine.url) as s:
        rec = repo.record_window(
            s, version_id=prod.id, site=site, window_start=window.start, window_end=window.end, n_studies=len(ds),
            shifted=bool(drift and drift.shifted), alpha=lf.alpha, tests=_tests_json(drift, notes),
            estimates={e.pathology: _estimate_json(e) for e in estimates}, ood=_ood_json(ood, rate),
            moved=moved, dataset_id=dataset.id, report_id=report_id)
    log.info("unlabelled window of %s at %s: %s", prod.ref, site, rec.tests.get("summary", ""))
    return UnlabelledResult(prod.ref, dataset, window, rec, drift, estimates, ood, report_id, still_open, notes)


def _images(ds: CXRDataset):
    for start in range(0, len(ds), 256):
        yield from ds.images(np.arange(start, min(start + 256, len(ds))))


def _file_report(engine: Any, prod: VersionEntity, site: str, window: Any, drift: WindowDrift, ds: CXRDataset,
                 probs: np.ndarray, names: list[str], notes: list[str]) -> tuple[int | None, int | None]:
    """The window's `distribution_shift` report (its id), unless one is still open for the site (that id)."""
    lf = engine.policy.label_free
    with session_scope(engine.url, read_only=True) as s:
        open_ = [r.id for r in repo.list_reports(s, model=prod.model) if r.site == site and r.kind == SHIFT
                 and r.status in _OPEN and (r.window_start, r.window_end) != (window.start, window.end)]
    if open_:
        notes.append(f"distribution_shift report {open_[-1]} is still open for {site}: not reported again")
        return None, open_[-1]
    outputs = [t for t in drift.tests if t.kind == "output"]
    pathology = (outputs[0].name if outputs else next(n for n in names if n))
    j = names.index(pathology)
    cases = [{"image_id": ds.image_ids[i], "score": round(float(probs[i, j]), 6), "label": None}
             for i in drift.most_shifted[:lf.label_request_size]]
    line = {"model": prod.model, "version": prod.version, "pathology": pathology, "kind": SHIFT, "metric": "shift_p",
            "value": float(drift.worst.p_adjusted), "target": float(lf.alpha), "site": site,
            "window_start": window.start, "window_end": window.end, "counts": {"tp": 0, "fp": 0, "tn": 0, "fn": 0},
            "cases": cases, "source": "label-free", "notes": f"no labels; {drift.summary}"[:2000]}
    with session_scope(engine.url) as s:
        res = ingest(s, [parse_report(line)], default_source="label-free")
    return (res.ids[0] if res.ids else None), None


def _tests_json(drift: WindowDrift | None, notes: list[str]) -> dict[str, Any]:
    if drift is None:
        return {"summary": "; ".join(notes) or "not tested", "tested": False, "notes": notes}
    return {"tested": True, "summary": drift.summary, "family": drift.family, "worst": drift.worst.name,
            "n_embedding_window": drift.n_embedding_window, "notes": notes,
            "tests": [{"name": t.name, "kind": t.kind, "statistic": t.statistic, "p": t.p_value,
                       "p_adjusted": t.p_adjusted, "rejected": t.rejected, "method": t.method} for t in drift.tests]}


def _estimate_json(e: PerformanceEstimate) -> dict[str, Any]:
    keys = ("threshold", "n", "valid", "reason", "positive_rate", "ood_share", "unsupported_share", "recall",
            "recall_ci", "fpr", "fpr_ci", "prevalence", "prevalence_ci", "shortfall")
    return {k: getattr(e, k) for k in keys}


def _ood_json(ood: list[StudyAssessment], rate: float) -> dict[str, Any]:
    flags: dict[str, int] = {}
    for a in ood:
        for f in set(a.flags):
            flags[f] = flags.get(f, 0) + 1
    n_out = sum(a.outside for a in ood)
    return {"n": len(ood), "outside": n_out, "share": n_out / len(ood) if ood else None, "rate": rate,
            "flags": flags, "cutoff": ood[0].cutoff if ood else None}


def summary(u: UnlabelledResult) -> dict[str, Any]:
    """An unlabelled window's result as plain JSON (what `decide monitor run --unlabelled` prints)."""
    rec = u.record
    return {"unlabelled": True, "shifted": rec.shifted, "alpha": rec.alpha, "tests": rec.tests,
            "estimates": [{"pathology": e.pathology, **rec.estimates[e.pathology]} for e in u.estimates],
            "ood": rec.ood, "moved": rec.moved, "report_id": u.report_id, "still_open_report": u.still_open,
            "notes": u.notes, "window_id": rec.id}


def check_realised(engine: Any, prod: VersionEntity, ds: CXRDataset, probs: np.ndarray, site: str, window: Any
                   ) -> dict[str, Any] | None:
    """Labels for a window arrived: set the estimates recorded for the same site and window against them
    (per pathology; Holm over the window's pathologies says whether the estimate is contradicted) and store
    it with the window. None when no unlabelled window was recorded for it."""
    with session_scope(engine.url, read_only=True) as s:
        rec = repo.find_window(s, site, window.start, window.end)
    if rec is None or rec.version_id != prod.id:
        return None
    ref = reference_for(engine.catalog, engine.url, prod)
    names, labels = list(ref.pathologies), ds.aligned_labels(ref.pathologies)
    lf, seed = engine.policy.label_free, _seed(site, window.start)
    checks, skipped = {}, {}
    for name, t in _estimable(ref, prod.thresholds_for(site)).items():
        recorded = rec.estimates.get(name) or {}
        if not recorded.get("valid"):  # the window said its estimate could not be trusted: nothing to check
            skipped[name] = f"the window's estimate was not valid: {recorded.get('reason') or 'not estimated'}"
            continue
        j = names.index(name)
        checks[name] = check_against_labels(ref.maps[name], probs[:, j], labels[:, j], t, pathology=name,
                                            limits=_limits(engine.policy), alpha=lf.alpha, seed=seed)
    tested = [n for n, c in checks.items() if c.p_value is not None]
    adjusted = dict(zip(tested, holm([checks[n].p_value for n in tested]), strict=True)) if tested else {}
    realised: dict[str, Any] = {"pathologies": {}, "alpha": lf.alpha}
    for name, c in checks.items():
        realised["pathologies"][name] = {
            "n_labelled": c.n_labelled, "p": c.p_value, "p_adjusted": adjusted.get(name),
            "contradicted": bool(adjusted.get(name) is not None and adjusted[name] <= lf.alpha), "reason": c.reason,
            **{m: None if getattr(c, m) is None else {
                "estimate": getattr(c, m).estimate, "realised": getattr(c, m).realised,
                "realised_ci": getattr(c, m).realised_ci, "error": getattr(c, m).error} for m in ("recall", "fpr")}}
    realised["not_checked"] = skipped
    bad = sorted(n for n, v in realised["pathologies"].items() if v["contradicted"])
    realised["contradicted"] = bad
    realised["summary"] = (
        f"labels contradict the label-free estimate for {', '.join(bad)}: it cannot be trusted at {site}" if bad
        else f"labels agree with the label-free estimates ({len(tested)} checked)" if tested
        else f"no valid label-free estimate to check ({len(skipped)} not valid)")
    with session_scope(engine.url) as s:
        repo.set_window_realised(s, rec.id, realised)
    return realised

