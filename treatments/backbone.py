"""What the image-reading (backbone-level) treatments share.

The parent's network rebuilt from its weights, the training + calibration
images, the report site's films and the training-site reference films, the
site's acquisition style estimated from its own films, cached inputs of a
dense block (the frozen prefix runs once per image and data set), and how a
run stops when it cannot win: the policy's time budget and early stopping on
the target's AUROC over held-out calibration rows (`StoppingParams`,
`target_monitor`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cxr.blocks import block_inputs, tail_parameter_names
from cxr.data import CXRDataset, concat_datasets
from cxr.model import CXRDenseNet, build_model
from cxr.site_style import SiteStyle, estimate_site_style
from cxr.stats import auroc
from cxr.train import EarlyStopping
from cxr.weights import tensors_digest
from treatments.base import PlanningContext, TreatmentContext


class StoppingParams(BaseModel):
    """The policy's knobs for stopping a backbone treatment that cannot win (every one off by default)."""

    model_config = ConfigDict(extra="forbid")

    time_budget_s: float | None = Field(
        None, gt=0, description="Seconds the run may take, from the treatment's start (None: no budget). Checked "
                                "after every epoch: the first epoch that ends past it is the last, and the "
                                "candidate from the weights kept goes to the gate as usual.")
    early_stop_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs in a row without improving the target's AUROC on "
                                "held-out calibration rows, keeping the best epoch's weights (None: off).")
    early_stop_min_delta: float = Field(0.0, ge=0, description="The least AUROC gain that counts as improving.")


def patient_holdout(patients: Sequence[str], share: float, seed: int, salt: str) -> np.ndarray:
    """Rows whose patient hashes into the held-out `share` (stable, patient-level; `salt` names the use)."""
    def unit(pid: str) -> float:
        h = hashlib.blake2b(f"{salt}|{seed}|{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64
    return np.array([unit(pid) < share for pid in patients], dtype=bool)


def target_monitor(ctx: TreatmentContext, patience: int | None, min_delta: float, labels: np.ndarray,
                   sites: Sequence[str], score: Callable[[CXRDenseNet, np.ndarray], np.ndarray]
                   ) -> tuple[EarlyStopping | None, str]:
    """(early stopping, what it watches or why not): the report pathology's AUROC on held-out rows.

    `labels` (N, P) and `sites` are the held-out rows'; `score(model, rows)` gives the target output's
    scores (logits or probabilities) for those row indices. The report site's rows are used when they hold
    both classes of the target, else every held-out row; with neither, early stopping is off (and says why).
    """
    if patience is None:
        return None, ""
    y = labels[:, ctx.target_index]
    known = ~np.isnan(y)
    here = known & np.array([s == ctx.report.site for s in sites], dtype=bool)
    both = lambda rows: bool((y[rows] == 1).any() and (y[rows] == 0).any())  # noqa: E731
    rows, where = (here, f"at {ctx.report.site}") if both(here) else (known, "at every site")
    if not both(rows):
        return None, f"early stopping off: no positives or no negatives of {ctx.report.pathology} held out"
    idx = np.flatnonzero(rows)
    truth = y[idx].astype(int)

    def monitor(model: CXRDenseNet) -> float:
        with torch.inference_mode():
            return auroc(truth, np.asarray(score(model, idx), dtype=np.float64))

    name = f"held-out {ctx.report.pathology} AUROC {where} ({len(idx)} rows, {int(truth.sum())} positive)"
    return EarlyStopping(monitor, patience, min_delta, name), name


def parent_model(ctx: TreatmentContext) -> CXRDenseNet:
    """A fresh eval-mode copy of the parent's network; `ValueError` when the context carries no weights."""
    if ctx.load_state is None:
        raise ValueError("this treatment needs the parent's weights")
    m = build_model(ctx.spec)
    m.load_state_dict(ctx.load_state(), strict=True)
    return m.eval()


def image_sets(ctx: TreatmentContext) -> tuple[CXRDataset, CXRDataset]:
    """(train + calibration films, calibration films); `ValueError` unless the calibration films are there,
    in the calibration split's order."""
    data = ctx.image_data or {}
    if "calibration" not in data or tuple(data["calibration"].image_ids) != tuple(ctx.calibration.image_ids):
        raise ValueError("this treatment needs the calibration images, in the calibration split's order")
    parts = [d for d in (data.get("train"), data["calibration"]) if d is not None]
    return concat_datasets(parts, "train+calibration"), data["calibration"]


def applicable_with(planning: PlanningContext, need: int) -> tuple[bool, str]:
    """(applicable, why): at least `need` labelled calibration cases at the report's site."""
    if planning.calibration_cases < need:
        return False, f"only {planning.calibration_cases} labelled calibration cases at the site (needs {need})"
    return True, "retrains convolutional weights on images"


def reference_films(ctx: TreatmentContext) -> CXRDataset:
    """The training-site films: the train split, else the calibration rows of other sites."""
    data = ctx.image_data or {}
    if data.get("train") is not None:
        return data["train"]
    cal = data["calibration"]
    return cal.subset(np.flatnonzero(np.array([s != ctx.report.site for s in cal.sites])))


def site_style_of(ctx: TreatmentContext, n: int) -> SiteStyle | None:
    """The report site's style, estimated from its calibration films (labels unused) against the reference."""
    cal = (ctx.image_data or {})["calibration"]
    here = np.flatnonzero(np.array([s == ctx.report.site for s in cal.sites]))
    ref = reference_films(ctx)
    if len(here) < 8 or len(ref) < 8:
        return None
    rng = np.random.default_rng(ctx.seed)
    pick = lambda d, rows: d.images(np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False)))  # noqa: E731
    return estimate_site_style(pick(cal, here), pick(ref, np.arange(len(ref))))


def cached_block_inputs(ctx: TreatmentContext, model: CXRDenseNet, ds: CXRDataset, block: int) -> np.ndarray:
    """Inputs of `block` for `ds`, from the context's cache when the frozen prefix and data are the same."""
    if ctx.cache is None:
        return block_inputs(model, ds, block)
    tail = set(tail_parameter_names(model, block))
    state = model.state_dict()
    prefix = tensors_digest({k: v for k, v in state.items() if k not in tail})
    key = hashlib.sha256(f"block-inputs|{block}|{prefix}|{ds.digest()}|{ds.resolution}".encode()).hexdigest()
    got = ctx.cache.get(key)
    if got is not None and len(got) == len(ds):
        return got
    x = block_inputs(model, ds, block)
    ctx.cache.put(key, x)
    return x
