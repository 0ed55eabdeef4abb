"""Bring a trained (or imported) model into the registry as a first version.

Registers its data sets (train, calibration, one evaluation set per site),
chooses every pathology's operating threshold on the calibration split with
the policy's default method (F1-optimal by default: Youden's J took
Cardiomegaly's precision from 1.0 to 0.11 in the paper this product grew
from), evaluates it on every evaluation set with DeLong intervals, and
registers it — data links, thresholds, evaluations and audit event in one
transaction — optionally as `production`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data import CXRDataset
from cxr.thresholds import choose_operating_point
from cxr.weights import Weights, to_bytes
from decision.catalog import Catalog, head_of, record_dataset
from decision.evaluate import EvaluationReport, evaluate_scores
from decision.registration import register_weights_bytes
from decision.subgroups import subgroup_input
from policies import Policy
from registry.entities import DatasetEntity, VersionEntity
from registry.session import session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataBinding:
    """A data set with the role it plays and the source dict that re-opens it."""

    data: CXRDataset
    role: str
    source: dict


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, pathologies: list[str], policy: Policy
                      ) -> tuple[dict[str, float | None], dict[str, list[str]]]:
    """Per named output: the policy's default operating point on calibration data (None if not learnable)."""
    out: dict[str, float | None] = {}
    warnings: dict[str, list[str]] = {}
    for j, name in enumerate(pathologies):
        if not name:
            continue
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if y.sum() < 2 or (y == 0).sum() < 2:
            out[name] = None  # masked: never turned into 0.5
            continue
        slo = policy.slos.for_pathology(name)
        op, warn = choose_operating_point(
            y.astype(int), probs[known, j], None, policy.calibration.default_method,
            min_recall=slo.min_recall, max_fpr=slo.max_fpr, min_precision=policy.calibration.min_precision,
            delta=policy.calibration.delta, max_precision_drop=policy.calibration.max_precision_drop,
        )
        out[name] = float(op.threshold) if op.threshold is not None else None
        if warn:
            warnings[name] = warn
    return out, warnings


@dataclass
class Baseline:
    version: VersionEntity
    datasets: list[DatasetEntity]
    evaluations: dict[str, EvaluationReport]
    threshold_warnings: dict[str, list[str]]


def register_baseline(url: str | None, home: Path, model: str, weights: Weights, bindings: list[DataBinding],
                      policy: Policy, *, promote: bool = True, reason: str = "baseline") -> Baseline:
    """Register data sets, calibrate thresholds, evaluate and register `weights` as a version of `model`."""
    cat = Catalog(home)
    with session_scope(url) as s:
        entities = [record_dataset(s, b.data, b.role, b.source) for b in bindings]
    for e, b in zip(entities, bindings, strict=True):
        cat.attach(e, b.data)  # already open: no need to re-read it
    cat.remember(weights)
    names = list(weights.spec.pathologies)
    head = head_of(weights)
    cal = [e for e in entities if e.role == "calibration"]
    if not cal:
        raise ValueError("a baseline needs a calibration data set to choose its thresholds")
    labels = np.concatenate([cat.dataset(e).aligned_labels(names) for e in cal])
    probs = np.concatenate([cat.probabilities(weights, e, head) for e in cal])
    thresholds, warnings = choose_thresholds(labels, probs, names, policy)
    evals: dict[str, EvaluationReport] = {}
    rows = {}
    for e in (e for e in entities if e.role == "evaluation"):
        ds = cat.dataset(e)
        ev = evaluate_scores(ds.aligned_labels(names), cat.probabilities(weights, e, head), None,
                             [thresholds.get(n) for n in names], names, alpha=policy.gate.alpha,
                             subgroups=subgroup_input(ds, policy))
        evals[e.name], rows[e.id] = ev, ev.to_rows()
    data, _ = to_bytes(weights.spec, weights.state)
    with session_scope(url) as s:
        version = register_weights_bytes(
            s, data, model, source="baseline", thresholds=thresholds, promote=promote, reason=reason,
            dataset_ids=[e.id for e in entities], evaluations=rows, home=home,
            notes=f"thresholds: {policy.calibration.default_method} on {sum(e.size for e in cal)} calibration cases",
        )
    return Baseline(version, entities, evals, warnings)


def register_from_source(url: str | None, home: Path, model: str, weights: Weights, source: str, *, n_train: int,
                         n_eval: int, seed: int, policy: Policy, promote: bool) -> Baseline:
    """Register freshly trained `weights` with the train / calibration / evaluation splits of `source`."""
    from cxr.sources import open_recorded, recorded_source

    res = weights.spec.resolution
    bindings = []
    for role, split, n in (("train", "train", n_train), ("calibration", "calibration", n_eval),
                           ("evaluation", "evaluation", n_eval)):
        src = recorded_source(source, resolution=res, split=split, n=n, seed=seed)
        bindings.append(DataBinding(open_recorded(src, cache_dir=Path(home) / "cache"), role, src))
    return register_baseline(url, home, model, weights, bindings, policy, promote=promote,
                             reason=f"trained with `decide train` on {source}")
