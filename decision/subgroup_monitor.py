"""Subgroup monitoring: a report for a subgroup whose FPR or recall breaches its SLO although the site's does not.

A site can meet its SLO on average while one group of its patients does not: site-b's AP portable films
magnify the heart, so Cardiomegaly's false-positive rate there can be 0.4 while the site's is within 0.3.
`assess_subgroups` looks, in one labelled window, at every group the policy declares (`[subgroups]`: its
attributes and intersections; the `site` attribute and the site part of an intersection are dropped —
the window is one site's) and files what the evidence shows, and nothing else:

* **Only groups large enough to judge.** `decision.subgroups` splits the window (`evaluate_subgroups`);
  a group it marks too small (fewer than `[subgroups] min_positives` / `min_negatives`) is never tested.
  The monitor's own minimums apply too (`MIN_NEGATIVES` negatives for an FPR, `MIN_POSITIVES` positives
  for a recall), as for a whole site. A group of unknown sex or age is not a group a report can name.
* **Only significant breaches, with the family's error controlled.** Each (group, pathology, kind) is an
  exact one-sided binomial test of H0 "the group meets its SLO": FPR, H0 fpr <= max_fpr,
  p = P(Bin(n_neg, max_fpr) >= FP); recall, H0 recall >= min_recall, p = P(Bin(n_pos, min_recall) <= TP).
  Exact at any group size. The family is every test of the window (every judgeable group x watched
  pathology x {false positives, false negatives} with an SLO, not already reported for the whole site);
  Holm's step-down at the monitor's alpha rejects a test iff its adjusted p <= alpha, so a window whose
  groups all meet their SLOs files a false subgroup report with probability at most alpha — however many
  groups the policy declares. (A rejected test at Holm level alpha / k also puts the exact one-sided
  Clopper–Pearson bound of the rate beyond the target.) AUROC drops are judged for the whole site only.
* **No flood.** Nothing for a pathology and kind whose whole-site report this window already files.
  Of the significant groups of one pathology and kind, one report: the coarsest group (fewest attributes;
  then the smallest adjusted p) — its notes name the other significant groups.

A report is an ordinary error report with its `subgroup` ("view=AP"; `cxr.subgroup_key`), its group's
counts and cases, and a first line such as "Cardiomegaly FPR 0.41 on AP films at site-b". It goes
through the same validation and idempotent ingest as every report (the key holds the subgroup).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from cxr.kinds import HEADLINE_METRIC, IssueKind
from cxr.subgroup_key import describe, from_group, parse
from decision.monitor import MIN_NEGATIVES, MIN_POSITIVES, SiteMetrics
from decision.subgroups import SubgroupEval, SubgroupInput, SubgroupSettings, evaluate_subgroups, group_columns
from policies import Policy

__all__ = ["SubgroupFinding", "assess_subgroups", "declared_settings", "subgroup_reports"]

_FP, _FN = IssueKind.false_positives, IssueKind.false_negatives


@dataclass(frozen=True)
class SubgroupFinding:
    """One tested (group, pathology, kind) of the family, or one group too small to test (`p_value` None)."""

    site: str
    subgroup: str  # canonical, "view=AP"
    pathology: str
    kind: str
    n: int  # negatives (FPR) or positives (recall) it is judged on
    value: float | None
    target: float
    p_value: float | None = None
    adjusted: float | None = None
    filed: bool = False
    reason: str = ""


def declared_settings(policy: Policy) -> SubgroupSettings | None:
    """The policy's `[subgroups]` as groups within one site (module doc); None when the section is off."""
    if not policy.subgroups.enabled:
        return None
    s = SubgroupSettings.from_policy(policy)
    singles = [a for a in s.attributes if a != "site"]
    combos: list[tuple[str, ...]] = []
    for combo in s.intersections:
        rest = tuple(a for a in combo if a != "site")
        if len(rest) == 1 and rest[0] not in singles:
            singles.append(rest[0])
        elif len(rest) > 1 and rest not in combos:
            combos.append(rest)
    return dataclasses.replace(s, attributes=tuple(singles), intersections=tuple(combos))


def _binom_p(kind: str, hits: int, n: int, target: float) -> float:
    from scipy.stats import binom  # lazily: the CLI's model-free commands import this package

    if kind == _FP:  # P(X >= fp), X ~ Bin(n_neg, max_fpr)
        return float(min(1.0, binom.sf(hits - 1, n, target)))
    return float(min(1.0, binom.cdf(hits, n, target)))  # P(X <= tp), X ~ Bin(n_pos, min_recall)


def _holm(p: list[float]) -> list[float]:
    from cxr.drift import holm

    return [float(x) for x in holm(p)] if p else []


def _tests(evals: Sequence[SubgroupEval], site: str, policy: Policy, covered: set[tuple[str, str]],
           ) -> tuple[list[tuple[SubgroupFinding, SubgroupEval]], list[SubgroupFinding]]:
    tests, small = [], []
    for g in evals:
        key = from_group(g.attribute, g.group)
        if key is None or g.threshold is None:  # "unknown" sex, age or view: no group a report can name;
            continue  # no operating point: no FPR or recall to judge
        slo = policy.slos.for_pathology(g.pathology)
        for kind, target, value, n, hits, least in ((_FP, slo.max_fpr, g.fpr, g.n_neg, g.fp, MIN_NEGATIVES),
                                                    (_FN, slo.min_recall, g.recall, g.n_pos, g.tp, MIN_POSITIVES)):
            if target is None or (g.pathology, kind) in covered:
                continue
            if not g.judgeable or n < least or value is None or hits is None:
                why = g.reason or f"too small to judge: {n} {'negatives' if kind == _FP else 'positives'} " \
                                  f"(the monitor needs {least})"
                small.append(SubgroupFinding(site, key, g.pathology, kind, n, value, target, reason=why))
                continue
            p = _binom_p(kind, hits, n, target)
            tests.append((SubgroupFinding(site, key, g.pathology, kind, n, value, target, p), g))
    return tests, small


def _phrase(g: SubgroupEval, f: SubgroupFinding) -> str:
    metric = "FPR" if f.kind == _FP else "recall"
    return f"{g.pathology} {metric} {f.value:.2f} on {describe(f.subgroup)} at {f.site}"


def assess_subgroups(model: str, version: int, thresholds: dict[str, float | None], pathologies: list[str],
                     labels: np.ndarray, probs: np.ndarray, image_ids: Sequence[str], sex: Sequence[str],
                     age: np.ndarray, views: Sequence[str], sites: Sequence[str], policy: Policy,
                     window: tuple[datetime, datetime], *, site_reports: Sequence[dict[str, Any]] = (),
                     site_metrics: Sequence[SiteMetrics] = (), alpha: float = 0.05, max_cases: int = 50,
                     ) -> tuple[list[SubgroupFinding], list[dict[str, Any]]]:
    """The findings (tested and too small) and the subgroup reports (ErrorReport dicts) of one window.

    Arrays are per film, as `decision.monitor.assess` takes them, plus each film's sex, age (NaN unknown)
    and view (`cxr.film_attributes`). A blank pathology name is not watched. `site_reports`: the whole-site
    reports of this window (their pathology and kind are not reported again per group); `site_metrics`:
    the whole-site metrics, quoted in the notes. Pure: arrays in, dicts out.
    """
    settings = declared_settings(policy)
    if settings is None or (not settings.attributes and not settings.intersections):
        return [], []
    site_arr, findings, reports = np.asarray(list(sites), dtype=object), [], []
    watched = [j for j, n in enumerate(pathologies) if n]
    names = [pathologies[j] for j in watched]
    for site in sorted(set(site_arr.tolist())):
        at = np.flatnonzero(site_arr == site)
        cols = group_columns([sex[i] for i in at], np.asarray(age, dtype=float)[at], [views[i] for i in at],
                             [site] * len(at), settings)
        lab, pr = np.asarray(labels, dtype=float)[at][:, watched], np.asarray(probs, dtype=float)[at][:, watched]
        evals = evaluate_subgroups(lab, pr, [thresholds.get(n) for n in names], names,
                                   SubgroupInput(cols, settings), alpha=alpha)
        covered = {(r["pathology"], IssueKind(r["kind"]).value) for r in site_reports if r.get("site") == site}
        tests, small = _tests(evals, site, policy, covered)
        adjusted = _holm([f.p_value for f, _ in tests])
        tested = [(dataclasses.replace(f, adjusted=q), g) for (f, g), q in zip(tests, adjusted, strict=True)]
        significant = [(f, g) for f, g in tested if f.adjusted is not None and f.adjusted <= alpha]
        chosen: dict[tuple[str, str], tuple[SubgroupFinding, SubgroupEval]] = {}
        for f, g in sorted(significant, key=lambda t: (len(parse(t[0].subgroup)), t[0].adjusted, t[0].subgroup)):
            chosen.setdefault((f.pathology, f.kind), (f, g))
        whole = {(m.pathology, m.site): m for m in site_metrics}
        for (name, kind), (f, g) in chosen.items():
            others = [o.subgroup for o, _ in significant if (o.pathology, o.kind) == (name, kind) and o is not f]
            rows = at[np.asarray(cols[g.attribute], dtype=object) == g.group]
            reports.append(_report(model, version, f, g, rows, labels, probs, image_ids, pathologies, window,
                                   whole.get((name, site)), others, len(tests), alpha, max_cases))
        filed = {(f.pathology, f.kind, f.subgroup) for f, _ in chosen.values()}
        findings += [dataclasses.replace(f, filed=(f.pathology, f.kind, f.subgroup) in filed) for f, _ in tested]
        findings += small
    return findings, reports


def _report(model: str, version: int, f: SubgroupFinding, g: SubgroupEval, rows: np.ndarray, labels: np.ndarray,
            probs: np.ndarray, image_ids: Sequence[str], pathologies: list[str], window: tuple[datetime, datetime],
            whole: SiteMetrics | None, others: list[str], family: int, alpha: float, max_cases: int,
            ) -> dict[str, Any]:
    j = pathologies.index(f.pathology)
    y, s = np.asarray(labels, dtype=float)[rows, j], np.asarray(probs, dtype=float)[rows, j]
    known = ~np.isnan(y)
    idx, y, s = rows[known], y[known].astype(int), s[known]
    pred = s >= g.threshold
    if f.kind == _FP:
        worst = sorted((i for i in range(len(y)) if pred[i] and y[i] == 0), key=lambda i: -s[i])
        metric, ci, n_what = "FPR", (g.fpr_lo, g.fpr_hi), f"{g.n_neg} negatives"
    else:
        worst = sorted((i for i in range(len(y)) if not pred[i] and y[i] == 1), key=lambda i: s[i])
        metric, ci, n_what = "recall", (g.recall_lo, g.recall_hi), f"{g.n_pos} positives"
    cases = [{"image_id": str(image_ids[idx[i]]), "score": round(float(s[i]), 6), "label": int(y[i])}
             for i in worst[:max_cases]]
    if whole is not None:
        site_value = whole.fpr if f.kind == _FP else whole.recall
        site_txt = (f"; the site as a whole: {metric} {site_value:.3f}" if site_value is not None
                    else "; the site as a whole: too few cases")
    else:
        site_txt = ""
    also = f"; also significant: {', '.join(sorted(others))}" if others else ""
    op = ">" if f.kind == _FP else "<"
    notes = (f"{_phrase(g, f)} ({metric} {f.value:.3f}, exact {1 - alpha:.0%} CI {ci[0]:.3f}–{ci[1]:.3f}, over "
             f"{n_what} at threshold {g.threshold:.4f}; SLO {'<=' if f.kind == _FP else '>='} {f.target:.3f}: exact "
             f"one-sided binomial p {f.p_value:.3g} that it is not {op} the SLO, Holm-adjusted {f.adjusted:.3g} over "
             f"{family} subgroup tests){site_txt}{also}")
    return {"model": model, "version": version, "pathology": f.pathology, "kind": f.kind,
            "metric": HEADLINE_METRIC[f.kind], "value": float(f.value), "target": float(f.target), "site": f.site,
            "subgroup": f.subgroup, "window_start": window[0], "window_end": window[1], "source": "monitor",
            "counts": {"tp": int(g.tp), "fp": int(g.fp), "tn": int(g.tn), "fn": int(g.fn)}, "cases": cases,
            "notes": notes}


def subgroup_reports(model: str, version: int, thresholds: dict[str, float | None], pathologies: list[str],
                     labels: np.ndarray, probs: np.ndarray, ds, policy: Policy, window: tuple[datetime, datetime],
                     *, site_reports: Sequence[dict[str, Any]] = (), site_metrics: Sequence[SiteMetrics] = (),
                     ) -> list[dict[str, Any]]:
    """`assess_subgroups` on a `cxr.data.CXRDataset` (sex and age from the NIH row each film was drawn from,
    `cxr.film_attributes`): the subgroup reports of a window, for `decision.jobs.monitor_window`."""
    from cxr.film_attributes import film_attributes

    fa = film_attributes(ds.image_ids, ds.views, ds.sites)
    _, reports = assess_subgroups(model, version, thresholds, pathologies, labels, probs, list(ds.image_ids),
                                  fa.sex, fa.age, fa.view, fa.site, policy, window, site_reports=site_reports,
                                  site_metrics=site_metrics)
    return reports


def report_key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """(site, subgroup, pathology, kind) of a report dict: what one standing issue is, across windows."""
    return r["site"], r.get("subgroup") or "", r["pathology"], IssueKind(r["kind"]).value


def standing_report(r: dict[str, Any], unresolved: dict[tuple[str, str, str, str], int]) -> int | None:
    """The id of an unresolved report (of an earlier window) that already stands for `r`: one with its key,
    or, for a subgroup report, its site's whole-site report of the same pathology and kind (whose fix covers
    the group). `unresolved` maps `report_key`s to ids."""
    key = report_key(r)
    own = unresolved.get(key)
    if own is None and key[1]:
        return unresolved.get((key[0], "", key[2], key[3]))
    return own
