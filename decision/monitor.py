"""The monitor: labelled feedback → per-pathology, per-site metrics → SLOs → error reports.

A hospital's recent, labelled studies (a window of feedback) are scored by the
production version; each pathology's recall, false-positive rate and AUROC at
each site are compared with the policy's SLOs. A report is raised only when
the evidence is statistically clear — the whole 95% interval (Wilson for
rates, DeLong for AUROC) lies on the wrong side of the target — so a noisy
week does not page anyone. Reports carry their counts and case-level evidence
(the most confident false positives, the least confident false negatives) and
go through the same validation and ingestion path as `decide ingest`;
re-running a window stores nothing twice (idempotency key: version, site,
pathology, kind, window).

`assess` is pure (numbers in, report dicts out); `decision.jobs.monitor_window` does the I/O. The
groups of a site's patients that the policy declares (`[subgroups]`: "view=AP" films, women over 65) are
judged by `decision.subgroup_monitor`, which files a subgroup report only where a group breaches its SLO
significantly while the site's own report for that pathology and kind is not filed; the idempotency key
then holds the subgroup too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Any

import numpy as np

from cxr.kinds import HEADLINE_METRIC, IssueKind
from cxr.stats import delong_ci
from policies import Policy

MIN_NEGATIVES = 30
MIN_POSITIVES = 10
_FP, _FN, _AUROC = IssueKind.false_positives, IssueKind.false_negatives, IssueKind.auroc_drop


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - alpha / 2)  # scipy's norm.ppf to 1e-15, without importing scipy
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)

@dataclass
class SiteMetrics:
    """One pathology at one site over the window."""

    pathology: str
    site: str
    threshold: float | None
    n_pos: int
    n_neg: int
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    recall: float | None = None
    recall_ci: tuple[float, float] | None = None
    fpr: float | None = None
    fpr_ci: tuple[float, float] | None = None
    auroc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    breaches: list[str] = field(default_factory=list)


def _case(image_id: str, score: float, label: int) -> dict[str, Any]:
    return {"image_id": image_id, "score": round(float(score), 6), "label": label}


def assess(
    model: str, version: int, thresholds: dict[str, float | None], pathologies: list[str], labels: np.ndarray,
    probs: np.ndarray, image_ids: list[str], sites: list[str], policy: Policy, window: tuple[datetime, datetime],
    *, alpha: float = 0.05, max_cases: int = 50,
) -> tuple[list[SiteMetrics], list[dict[str, Any]]]:
    """Metrics per (pathology, site) and the error reports the SLOs call for (as ErrorReport dicts)."""
    rows, reports = [], []
    site_arr = np.array(sites)
    for site in sorted(set(sites)):
        at = site_arr == site
        for j, name in enumerate(pathologies):
            if not name:
                continue
            known = at & ~np.isnan(labels[:, j])
            y, s = labels[known, j].astype(int), probs[known, j]
            ids = [image_ids[i] for i in np.flatnonzero(known)]
            t = thresholds.get(name)
            m = SiteMetrics(name, site, t, int(y.sum()), int((y == 0).sum()))
            slo = policy.slos.for_pathology(name)
            base = dict(model=model, version=version, pathology=name, site=site, window_start=window[0],
                        window_end=window[1], source="monitor")
            if t is not None:
                pred = s >= t
                m.tp, m.fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
                m.tn, m.fn = int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
                counts = {"tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn}
                if m.n_neg >= MIN_NEGATIVES:
                    m.fpr, m.fpr_ci = m.fp / m.n_neg, wilson(m.fp, m.n_neg, alpha)
                    if slo.max_fpr is not None and m.fpr_ci[0] > slo.max_fpr:
                        m.breaches.append(_FP)
                        worst = sorted((i for i in range(len(y)) if pred[i] and y[i] == 0), key=lambda i: -s[i])
                        reports.append({**base, "kind": _FP, "metric": HEADLINE_METRIC[_FP], "value": m.fpr,
                                        "target": slo.max_fpr, "counts": counts,
                                        "cases": [_case(ids[i], s[i], 0) for i in worst[:max_cases]],
                                        "notes": f"FPR {m.fpr:.3f} (95% CI {m.fpr_ci[0]:.3f}–{m.fpr_ci[1]:.3f}) "
                                                 f"over {m.n_neg} negatives at threshold {t:.4f}"})
                if m.n_pos >= MIN_POSITIVES:
                    m.recall, m.recall_ci = m.tp / m.n_pos, wilson(m.tp, m.n_pos, alpha)
                    if slo.min_recall is not None and m.recall_ci[1] < slo.min_recall:
                        m.breaches.append(_FN)
                        worst = sorted((i for i in range(len(y)) if not pred[i] and y[i] == 1), key=lambda i: s[i])
                        reports.append({**base, "kind": _FN, "metric": HEADLINE_METRIC[_FN], "value": m.recall,
                                        "target": slo.min_recall, "counts": counts,
                                        "cases": [_case(ids[i], s[i], 1) for i in worst[:max_cases]],
                                        "notes": f"recall {m.recall:.3f} (95% CI {m.recall_ci[0]:.3f}–"
                                                 f"{m.recall_ci[1]:.3f}) over {m.n_pos} positives"})
            if m.n_pos >= MIN_POSITIVES and m.n_neg >= MIN_NEGATIVES:
                ci = delong_ci(y, s, alpha)
                m.auroc, m.auroc_ci = ci.auc, (ci.lo, ci.hi)
                if slo.min_auroc is not None and ci.hi is not None and ci.hi < slo.min_auroc:
                    m.breaches.append(_AUROC)
                    counts = {"tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn}
                    reports.append({**base, "kind": _AUROC, "metric": HEADLINE_METRIC[_AUROC], "value": ci.auc,
                                    "target": slo.min_auroc, "counts": counts, "cases": [],
                                    "notes": f"AUROC {ci.auc:.3f} (95% CI {ci.lo:.3f}–{ci.hi:.3f}) "
                                             f"over {m.n_pos} positives / {m.n_neg} negatives"})
            rows.append(m)
    return rows, reports
