"""Per-subgroup evaluation: every pathology, split by sex, age band, view, site and declared intersections.

A model that is fine on average can fail one group (AP films of the over-65s, say). For each pathology and
each group of each attribute (and of each intersection the policy declares) this module reports, on the
group's labelled rows:

* the counts — films, positives, negatives, unlabelled, and TP/FN/FP/TN at the version's operating point;
* AUROC with its DeLong (1 - alpha) interval (`cxr.stats.delong_ci` on the group's rows alone);
* recall TP/(TP+FN) and FPR FP/(FP+TN) at the operating point (`score >= threshold`, as
  `cxr.stats.binary_metrics`), each with its exact Clopper–Pearson (1 - alpha) interval, which holds at
  any group size (`cxr.estimate.clopper_pearson`);
* with the parent's scores on the same rows, the paired comparison the subgroup gate needs
  (`decision/gate_subgroups.py`): the AUROC change with its paired DeLong standard error
  (`cxr.stats.delong_paired`), the parent's recall at its own threshold, and the discordant positives —
  those the parent caught and the candidate misses (`recall_lost`) and the reverse (`recall_gained`).

**Too small to judge.** A group with fewer than `min_positives` positives or `min_negatives` negatives for
a pathology (or without a defined AUROC interval) is kept, marked `judgeable = False` with the reason, and
carries `positives_needed`: the smallest number of positives n₁ — negatives n₀ scaled to keep the group's
prevalence (the pathology's prevalence in the whole set when the group has no case of a class) — at which
the design half-width of the group's own (1 - alpha) AUROC interval, z·√V(A; n₁, n₀), is at most the
policy's margin. V is Hanley & McNeil's (1982) variance (`decision.power.hanley_mcneil_variance`) at A =
the group's AUROC (else the pathology's AUROC on the whole set, else 0.75). It is about one group's AUROC,
not about a paired candidate-parent difference (that is `decision.power.positives_needed`). Every group
gets the number; for a judgeable one it says whether its interval is already as narrow as the margin.
No group is ever dropped. Everything here is pure: arrays in, frozen dataclasses out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from cxr.errors import InvalidInput
from cxr.estimate import clopper_pearson
from cxr.stats import delong_ci, delong_paired
from decision.power import hanley_mcneil_variance

__all__ = ["ATTRIBUTES", "SubgroupEval", "SubgroupInput", "SubgroupSettings", "age_band_labels",
           "evaluate_subgroups", "group_columns", "positives_for_half_width", "subgroup_input"]

ATTRIBUTES = ("sex", "age_band", "view", "site")
UNKNOWN = "unknown"
_CAP = 10_000_000


@dataclass(frozen=True)
class SubgroupSettings:
    """What to split by and when a group is too small; `from_policy` reads the policy's `[subgroups]`."""

    attributes: tuple[str, ...] = ATTRIBUTES
    age_bands: tuple[int, ...] = (40, 65)
    intersections: tuple[tuple[str, ...], ...] = (("sex", "age_band"),)
    min_positives: int = 10
    min_negatives: int = 10
    margin: float = 0.02

    @classmethod
    def from_policy(cls, policy) -> SubgroupSettings:
        sg = policy.subgroups
        margin = policy.gate.noninferiority_margin if sg.margin is None else sg.margin
        return cls(tuple(sg.attributes), tuple(sg.age_bands), tuple(tuple(c) for c in sg.intersections),
                   sg.min_positives, sg.min_negatives, float(margin))


@dataclass(frozen=True)
class SubgroupInput:
    """Group labels per row (attribute -> N labels, e.g. `group_columns`) and the settings."""

    columns: Mapping[str, Sequence[str]]
    settings: SubgroupSettings = SubgroupSettings()


@dataclass(frozen=True)
class SubgroupEval:
    """One pathology on one group. Rates are None where their denominator is 0; intervals are (1 - alpha)."""

    pathology: str
    attribute: str  # "sex", or an intersection "sex & age_band"
    group: str  # "F", or "F & 65+"
    n: int  # labelled films for this pathology
    n_pos: int
    n_neg: int
    n_unlabelled: int
    auroc: float | None
    auroc_lo: float | None
    auroc_hi: float | None
    threshold: float | None
    tp: int | None
    fn: int | None
    fp: int | None
    tn: int | None
    recall: float | None
    recall_lo: float | None
    recall_hi: float | None
    fpr: float | None
    fpr_lo: float | None
    fpr_hi: float | None
    judgeable: bool
    reason: str | None
    #: positives at which z·sqrt(V_HM) of this group's AUROC is ≤ margin (module doc); None past 10,000,000
    positives_needed: int | None
    margin: float
    #: paired with the parent on the same rows (None without the parent's scores, or where undefined)
    delta_auroc: float | None = None
    se_delta: float | None = None
    parent_recall: float | None = None
    recall_lost: int | None = None
    recall_gained: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """E.g. "Effusion, sex & age_band = F & <40: too small to judge (4 positives, 212 negatives; policy
        minimum 10/10); about 310 positives would make its 95% AUROC interval ±0.020 or narrower"."""
        head = f"{self.pathology}, {self.attribute} = {self.group}"
        need = ("more than 10,000,000" if self.positives_needed is None else f"about {self.positives_needed:,}")
        tail = f"{need} positives would make its AUROC interval ±{self.margin:.3f} or narrower"
        if not self.judgeable:
            return f"{head}: {self.reason}; {tail}"
        return f"{head}: AUROC {self.auroc:.3f} [{self.auroc_lo:.3f}, {self.auroc_hi:.3f}]; {tail}"


def age_band_labels(age: np.ndarray, edges: Sequence[int]) -> list[str]:
    """Band of each age: edges [40, 65] give "<40", "40-64", "65+"; NaN gives "unknown"."""
    edges = list(edges)
    names = ([f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
             + [f"{edges[-1]}+"]) if edges else ["all"]
    out = []
    for a in np.asarray(age, dtype=float):
        out.append(UNKNOWN if math.isnan(a) else names[int(np.searchsorted(edges, a, side="right"))])
    return out


def group_columns(sex: Sequence[str], age, view: Sequence[str], site: Sequence[str],
                  settings: SubgroupSettings = SubgroupSettings()) -> dict[str, list[str]]:
    """Group label per row for every attribute in `settings` and every declared intersection.

    An intersection's label joins its parts with " & " ("F & 65+"), its name likewise ("sex & age_band").
    Raises `InvalidInput` on columns of different lengths or an unknown attribute.
    """
    base = {"sex": [str(x) for x in sex], "age_band": age_band_labels(np.asarray(age, dtype=float), settings.age_bands),
            "view": [str(x) for x in view], "site": [str(x) for x in site]}
    if len({len(v) for v in base.values()}) != 1:
        raise InvalidInput("sex, age, view and site need one value per film", field="subgroups")
    bad = [a for a in (*settings.attributes, *(x for c in settings.intersections for x in c)) if a not in base]
    if bad:
        raise InvalidInput(f"unknown subgroup attribute(s) {bad}; known: {list(ATTRIBUTES)}", field="subgroups")
    out = {a: base[a] for a in settings.attributes}
    for combo in settings.intersections:
        out[" & ".join(combo)] = [" & ".join(parts) for parts in zip(*(base[a] for a in combo), strict=True)]
    return out


def positives_for_half_width(auc: float, n_pos: int, n_neg: int, margin: float, alpha: float,
                             *, prevalence: float | None = None) -> int | None:
    """Smallest n₁ ≥ 1 with z·sqrt(V_HM(auc; n₁, n₀)) ≤ margin, n₀ = round(n₁·n_neg/n_pos) (module doc).

    Without a case of each class the negatives-per-positive ratio comes from `prevalence` (in (0, 1)); with
    neither, 1. Returns None when not even 10,000,000 positives suffice (or margin ≤ 0)."""
    if margin <= 0:
        return None
    if n_pos > 0 and n_neg > 0:
        ratio = n_neg / n_pos
    elif prevalence is not None and 0 < prevalence < 1:
        ratio = (1 - prevalence) / prevalence
    else:
        ratio = 1.0
    z = NormalDist().inv_cdf(1 - alpha / 2)

    def ok(n: int) -> bool:
        return z * math.sqrt(hanley_mcneil_variance(auc, n, max(1, round(n * ratio)))) <= margin

    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > _CAP:
            return None
    lo = hi // 2  # ok(lo) is False (or lo is 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _rate(k: int, n: int, alpha: float) -> tuple[float | None, float | None, float | None]:
    if n == 0:
        return None, None, None
    lo, hi = clopper_pearson(k, n, alpha)
    return k / n, lo, hi


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _paired(y: np.ndarray, s: np.ndarray, p: np.ndarray | None, t: float | None, t_par: float | None) -> dict:
    """The candidate (`s`, threshold `t`) vs the parent (`p`, `t_par`) on one group's labelled rows."""
    if p is None or not np.isfinite(p).all() or not np.isfinite(s).all():
        return {}
    out: dict = {}
    if y.any() and not y.all():
        pr = delong_paired(y, s, p)
        if not math.isnan(pr.var):
            out |= {"delta_auroc": float(pr.delta), "se_delta": math.sqrt(pr.var)}
    if t is not None and t_par is not None and y.any():
        hit_c, hit_p = s[y] >= t, p[y] >= t_par
        out |= {"parent_recall": float(hit_p.mean()), "recall_lost": int(np.count_nonzero(hit_p & ~hit_c)),
                "recall_gained": int(np.count_nonzero(hit_c & ~hit_p))}
    return out


def _one_group(name: str, attr: str, group: str, y_col: np.ndarray, s_col: np.ndarray, t: float | None,
               settings: SubgroupSettings, alpha: float, overall_auc: float | None,
               prevalence: float | None, p_col: np.ndarray | None = None,
               t_par: float | None = None) -> SubgroupEval:
    known = ~np.isnan(y_col)
    y, s = y_col[known].astype(bool), s_col[known]
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    auc = lo = hi = None
    if n_pos and n_neg and np.isfinite(s).all():
        ci = delong_ci(y, s, alpha)
        auc, lo, hi = _num(ci.auc), _num(ci.lo), _num(ci.hi)
    tp = fn = fp = tn = None
    rec = fpr = (None, None, None)
    if t is not None and np.isfinite(s).all():
        pred = s >= t
        tp, fp = int(np.count_nonzero(pred & y)), int(np.count_nonzero(pred & ~y))
        fn, tn = n_pos - tp, n_neg - fp
        rec, fpr = _rate(tp, n_pos, alpha), _rate(fp, n_neg, alpha)
    reason = None
    if n_pos < settings.min_positives or n_neg < settings.min_negatives:
        reason = (f"too small to judge: {n_pos} positives, {n_neg} negatives "
                  f"(policy minimum {settings.min_positives}/{settings.min_negatives})")
    elif lo is None:
        reason = "too small to judge: no AUROC interval (the model has no finite score for every case)"
    a = auc if auc is not None else (overall_auc if overall_auc is not None else 0.75)
    need = positives_for_half_width(a, n_pos, n_neg, settings.margin, alpha, prevalence=prevalence)
    paired = _paired(y, s, None if p_col is None else p_col[known], t, t_par)
    return SubgroupEval(name, attr, group, int(y.size), n_pos, n_neg, int(y_col.size - y.size), auc, lo, hi, t,
                        tp, fn, fp, tn, *rec, *fpr, reason is None, reason, need, settings.margin, **paired)


def evaluate_subgroups(labels, probs, thresholds: Sequence[float | None], pathologies: Sequence[str],
                       subgroups: SubgroupInput, *, alpha: float = 0.05, parent_probs=None,
                       parent_thresholds: Sequence[float | None] | None = None) -> tuple[SubgroupEval, ...]:
    """Every pathology × every group of every attribute in `subgroups.columns`, in that order.

    `labels` N x P (0/1/NaN), `probs` N x P (an all-NaN column: no output, the pathology is skipped — the
    per-pathology report already says "not evaluable"), the P operating thresholds (None: no operating
    point, so no recall/FPR) and names. Groups are listed in sorted order of their labels; a group with no
    labelled film for a pathology still appears (n = 0, too small). Raises `InvalidInput` on a column
    whose length is not N. With the parent's N x P `parent_probs` (and its thresholds), each group also
    carries the paired comparison with the parent on its rows (module doc).
    """
    lab, pr = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    par = None if parent_probs is None else np.asarray(parent_probs, dtype=float)
    t_par = list(parent_thresholds) if parent_thresholds is not None else [None] * len(pathologies)
    n = lab.shape[0]
    cols = {a: np.asarray(list(v), dtype=object) for a, v in subgroups.columns.items()}
    for a, v in cols.items():
        if v.shape != (n,):
            raise InvalidInput(f"expected {n} group labels, got {v.shape[0]}", field=f"subgroups.{a}")
    out: list[SubgroupEval] = []
    for j, name in enumerate(pathologies):
        y_all, s_all = lab[:, j], pr[:, j]
        if np.isnan(s_all).all():
            continue
        known = ~np.isnan(y_all)
        n_pos_all = int(np.nansum(y_all))
        prevalence = n_pos_all / int(known.sum()) if known.any() else None
        overall = None
        if 0 < n_pos_all < int(known.sum()) and np.isfinite(s_all[known]).all():
            overall = _num(delong_ci(y_all[known].astype(bool), s_all[known], alpha).auc)
        for attr, col in cols.items():
            for g in sorted(set(col.tolist())):
                rows = col == g
                out.append(_one_group(name, attr, str(g), y_all[rows], s_all[rows], thresholds[j],
                                      subgroups.settings, alpha, overall, prevalence,
                                      None if par is None else par[rows, j], t_par[j]))
    return tuple(out)


def subgroup_input(dataset, policy) -> SubgroupInput | None:
    """The groups of every film of a `cxr.data.CXRDataset` under the policy's `[subgroups]` (sex and age from
    the NIH row each film was drawn from or is, `cxr.film_attributes`); None when the section is disabled.
    Pass it as `evaluate_scores(..., subgroups=subgroup_input(ds, policy))`."""
    if not policy.subgroups.enabled:
        return None
    from cxr.film_attributes import film_attributes

    fa = film_attributes(dataset.image_ids, dataset.views, dataset.sites)
    settings = SubgroupSettings.from_policy(policy)
    return SubgroupInput(group_columns(fa.sex, fa.age, fa.view, fa.site, settings), settings)
