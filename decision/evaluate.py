"""Evaluation of a candidate model version on a held-out split, paired with its parent.

The gate decides on this report, the registry stores its rows, auditors read it.
Input is plain arrays (labels N x P with NaN for unknown, probabilities N x P) so the
same code serves the phantom demo, the full DenseNet121 on NIH images and tests.
Each pathology is evaluated on its labelled cases only. A pathology with no
positives, no negatives, no labelled case or no model output is reported as "not
evaluable" with the reason; it never raises. With a parent, every pathology gets a
paired DeLong comparison on the same cases (the test that makes "exactly zero AUROC
change" after a one-row surgery come out as delta 0, p 1) and the true positives the
candidate loses. Given the films' groups (`subgroups`), the candidate is also evaluated per subgroup
(`decision/subgroups.py`) and `to_rows` stores each pathology's groups with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxr.errors import InvalidInput
from cxr.stats import binary_metrics, delong_ci, delong_paired
from decision.subgroups import SubgroupEval, SubgroupInput, evaluate_subgroups

__all__ = ["EvaluationReport", "ParentComparison", "PathologyEval", "evaluate_scores"]

ROW_KEYS = (
    "pathology",
    "auroc",
    "auroc_lo",
    "auroc_hi",
    "sensitivity",
    "specificity",
    "ppv",
    "f1",
    "threshold",
    "n_pos",
    "n_neg",
)


@dataclass(frozen=True)
class ParentComparison:
    """Candidate vs parent on one pathology: paired DeLong `delta = auroc(candidate) - auroc(parent)`.

    Parent metrics are at the parent's threshold; `tp_loss` counts labelled positives the parent
    called positive and the candidate does not (None without both thresholds). `var_candidate`,
    `var_parent` and `covariance` are the DeLong (co)variances of the two AUROC estimates on these
    cases (None below two cases of a class, and in evaluations stored before they were recorded):
    `delta`'s variance is `var_candidate + var_parent - 2 covariance`, and `correlation` is what the
    gate's power rule uses (`decision/power.py`).
    """

    parent_auroc: float | None
    delta: float | None
    delta_lo: float | None
    delta_hi: float | None
    p_value: float | None
    parent_threshold: float | None
    parent_sensitivity: float | None
    parent_specificity: float | None
    parent_ppv: float | None
    parent_f1: float | None
    parent_fpr: float | None
    parent_tp: int | None
    tp_loss: int | None
    tp_loss_fraction: float | None
    #: the candidate's scores equal the parent's on every labelled case (nothing changed for this output)
    identical: bool = False
    var_candidate: float | None = None
    var_parent: float | None = None
    covariance: float | None = None

    @property
    def correlation(self) -> float | None:
        """cov / sqrt(var_candidate var_parent), clipped to [-1, 1]; None when either variance is 0 or unknown."""
        v1, v2, cov = self.var_candidate, self.var_parent, self.covariance
        if v1 is None or v2 is None or cov is None or v1 <= 0 or v2 <= 0:
            return None
        return max(-1.0, min(1.0, cov / (v1 * v2) ** 0.5))

    @property
    def se_delta(self) -> float | None:
        """The paired DeLong standard error of `delta`, sqrt(v1 + v2 - 2 cov); None when unknown."""
        v1, v2, cov = self.var_candidate, self.var_parent, self.covariance
        if v1 is None or v2 is None or cov is None:
            return None
        return max(v1 + v2 - 2.0 * cov, 0.0) ** 0.5


@dataclass(frozen=True)
class PathologyEval:
    """One pathology's numbers; `evaluable` is False (with `reason`) when its AUROC is undefined.

    Threshold metrics are None without a threshold or where undefined; `auroc_lo`/`auroc_hi` is the
    DeLong 95% interval (None below two cases of a class).
    """

    pathology: str
    evaluable: bool
    reason: str | None
    n_pos: int
    n_neg: int
    n_unlabelled: int
    auroc: float | None
    auroc_lo: float | None
    auroc_hi: float | None
    threshold: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    fpr: float | None
    tp: int | None
    fp: int | None
    comparison: ParentComparison | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvaluationReport:
    """Per-pathology evaluation, in the model's pathology order."""

    n_cases: int
    pathologies: tuple[str, ...]
    results: tuple[PathologyEval, ...]
    has_parent: bool
    alpha: float = 0.05
    #: the candidate per pathology × subgroup (empty: not evaluated per subgroup)
    subgroups: tuple[SubgroupEval, ...] = ()

    def __getitem__(self, pathology: str) -> PathologyEval:
        """The result for `pathology`; raises `KeyError` for a name not in this report."""
        for r in self.results:
            if r.pathology == pathology:
                return r
        raise KeyError(pathology)

    def get(self, pathology: str) -> PathologyEval | None:
        try:
            return self[pathology]
        except KeyError:
            return None

    def evaluable(self) -> tuple[PathologyEval, ...]:
        return tuple(r for r in self.results if r.evaluable)

    def to_rows(self) -> list[dict]:
        """Plain dicts for the registry, one per pathology, with the keys of `ROW_KEYS` (and `subgroups`, the
        pathology's per-subgroup results as dicts, when they were evaluated)."""
        rows = [{k: getattr(r, k) for k in ROW_KEYS} for r in self.results]
        if self.subgroups:
            for row in rows:
                row["subgroups"] = [g.as_dict() for g in self.subgroups if g.pathology == row["pathology"]]
        return rows

    def as_dict(self) -> dict:
        return asdict(self)


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _thresholds(values, p: int, field: str) -> list[float | None]:
    if values is None:
        return [None] * p
    out = list(values)
    if len(out) != p:
        raise InvalidInput(f"expected {p} thresholds, got {len(out)}", field=field)
    # A NaN threshold means "no operating point" (torchxrayvision's op_norm trap): mask it, never use it.
    return [None if t is None or math.isnan(float(t)) else float(t) for t in out]


def _matrix(values, shape: tuple[int, int], field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != shape:
        raise InvalidInput(f"expected shape {shape}, got {arr.shape}", field=field)
    return arr


def _column_scores(col: np.ndarray, known: np.ndarray, field: str, name: str) -> np.ndarray | None:
    """Scores of the labelled cases of one column; None when the model has no output for it (all NaN)."""
    if np.isnan(col).all():
        return None
    col = col[known]
    if not np.isfinite(col).all():
        raise InvalidInput(f"non-finite probability for {name} on a labelled case", field=field)
    return col


def _tp_loss(y, cand, par, t_cand, t_par) -> tuple[int | None, int | None, float | None]:
    if t_cand is None or t_par is None:
        return None, None, None
    parent_hits = y & (par >= t_par)
    parent_tp = int(parent_hits.sum())
    lost = int(np.count_nonzero(parent_hits & (cand < t_cand)))
    return parent_tp, lost, (lost / parent_tp if parent_tp else None)


def _covariances(y, cand, par, var_delta: float) -> tuple[float | None, float | None, float | None]:
    """DeLong variances of both AUROCs and their covariance, from var(Δ) = v1 + v2 - 2 cov.

    The identity is exact for DeLong's estimator (sample variances of the structural components and of
    their differences, the same ddof), so the covariance needs no second pass over the cases.
    """
    v1, v2 = _num(delong_ci(y, cand).var), _num(delong_ci(y, par).var)
    if v1 is None or v2 is None or math.isnan(var_delta):
        return None, None, None
    return v1, v2, 0.5 * (v1 + v2 - var_delta)


def _compare(y, cand, par, t_cand, t_par, evaluable: bool, alpha: float) -> ParentComparison:
    v1 = v2 = cov = None
    if evaluable:
        pr = delong_paired(y, cand, par, alpha)
        auc_b, delta, lo, hi, p = _num(pr.auc_b), _num(pr.delta), _num(pr.lo), _num(pr.hi), _num(pr.p_value)
        v1, v2, cov = _covariances(y, cand, par, pr.var)
    else:
        auc_b = delta = lo = hi = p = None
    pm = binary_metrics(y, par, t_par) if t_par is not None and y.size else {}
    parent_tp, lost, frac = _tp_loss(y, cand, par, t_cand, t_par)
    return ParentComparison(
        auc_b,
        delta,
        lo,
        hi,
        p,
        t_par,
        pm.get("sensitivity"),
        pm.get("specificity"),
        pm.get("ppv"),
        pm.get("f1"),
        pm.get("fpr"),
        parent_tp,
        lost,
        frac,
        bool(np.array_equal(cand, par)),
        v1,
        v2,
        cov,
    )


def _one(name, y_col, cand_col, par_col, t_cand, t_par, alpha) -> PathologyEval:
    known = ~np.isnan(y_col)
    y = y_col[known].astype(bool)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    n_unl = int(y_col.size - y.size)
    cand = _column_scores(cand_col, known, "probs_candidate", name)
    reason = None
    if y.size == 0:
        reason = "no labelled cases"
    elif cand is None:
        reason = "the candidate has no output for this pathology"
    elif n_pos == 0:
        reason = "no positive cases"
    elif n_neg == 0:
        reason = "no negative cases"
    if cand is None:
        return PathologyEval(name, False, reason, n_pos, n_neg, n_unl, None, None, None, t_cand, *([None] * 8))
    auc = lo = hi = None
    if reason is None:
        ci = delong_ci(y, cand, alpha)
        auc, lo, hi = _num(ci.auc), _num(ci.lo), _num(ci.hi)
    m = binary_metrics(y, cand, t_cand) if t_cand is not None and y.size else {}
    comparison = None
    if par_col is not None:
        par = _column_scores(par_col, known, "probs_parent", name)
        if par is not None:
            comparison = _compare(y, cand, par, t_cand, t_par, reason is None, alpha)
    return PathologyEval(
        name,
        reason is None,
        reason,
        n_pos,
        n_neg,
        n_unl,
        auc,
        lo,
        hi,
        t_cand,
        m.get("sensitivity"),
        m.get("specificity"),
        m.get("ppv"),
        m.get("npv"),
        m.get("f1"),
        m.get("fpr"),
        m.get("tp"),
        m.get("fp"),
        comparison,
    )


def evaluate_scores(
    labels,
    probs_candidate,
    probs_parent=None,
    thresholds: Sequence[float | None] | None = None,
    pathologies: Sequence[str] | None = None,
    *,
    parent_thresholds: Sequence[float | None] | None = None,
    alpha: float = 0.05,
    subgroups: SubgroupInput | None = None,
) -> EvaluationReport:
    """Evaluate candidate probabilities (and compare with a parent's) against labels, per pathology.

    Takes `labels` N x P (0/1, NaN = unknown), `probs_candidate` N x P, optionally `probs_parent`
    N x P, the candidate's P thresholds (None/NaN = no operating point), the P pathology names
    and the parent's thresholds. A column of all-NaN probabilities means the model has no output
    for that pathology. Returns an `EvaluationReport`. Raises `InvalidInput` (naming the argument)
    on mismatched shapes, labels other than 0/1/NaN, or a non-finite probability on a labelled case.
    With `subgroups` (each film's group per attribute), the candidate is also evaluated per subgroup at
    its thresholds (`decision.subgroups.evaluate_subgroups`; a column of the wrong length raises), paired
    with the parent on each group's rows when `probs_parent` is given (for `decision.gate_subgroups`).
    """
    lab = np.asarray(labels, dtype=float)
    if lab.ndim != 2:
        raise InvalidInput(f"expected an N x P matrix, got shape {lab.shape}", field="labels")
    n, p = lab.shape
    known = lab[~np.isnan(lab)]
    if known.size and not np.isin(known, (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0, 1 or NaN", field="labels")
    names = [f"p{j}" for j in range(p)] if pathologies is None else list(pathologies)
    if len(names) != p or len(set(names)) != p:
        raise InvalidInput(f"expected {p} distinct pathology names, got {len(names)}", field="pathologies")
    cand = _matrix(probs_candidate, (n, p), "probs_candidate")
    par = None if probs_parent is None else _matrix(probs_parent, (n, p), "probs_parent")
    t_cand = _thresholds(thresholds, p, "thresholds")
    t_par = _thresholds(parent_thresholds, p, "parent_thresholds")
    results = tuple(
        _one(names[j], lab[:, j], cand[:, j], None if par is None else par[:, j], t_cand[j], t_par[j], alpha)
        for j in range(p)
    )
    groups = () if subgroups is None else evaluate_subgroups(lab, cand, t_cand, names, subgroups, alpha=alpha,
                                                             parent_probs=par, parent_thresholds=t_par)
    return EvaluationReport(n, tuple(names), results, par is not None, alpha, groups)
